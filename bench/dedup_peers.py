"""Near-dedup against the tools users would pick instead, whole processes on the same files.

    .venv/bin/python bench/dedup_peers.py                 # ~40 MB
    .venv/bin/python bench/dedup_peers.py --mb 200        # the scale where one process is the limit
    .venv/bin/python bench/dedup_peers.py --tools textbook,rensa --repeat 3
    .venv/bin/python bench/dedup_peers.py --tools textbook,textbook@base,rensa --code base=/tmp/old-checkout

``textbook@NAME`` runs the checkout given as ``--code NAME=PATH`` (on ``PYTHONPATH``, with this
checkout's venv) in the same rounds, on the same corpus: a change measured against the code before it.

The corpus is real English text available offline (Python's pydoc topics, man pages, the news
articles of --data when there, see bench/shared_data.py): documents of 400-1,600 words built from consecutive paragraphs,
plus planted near-duplicates (word edits at known rates), written as Parquet files of about 20,000
rows each. Truth is the exact Jaccard of word 5-gram sets over every pair that shares a 5-gram
(a sparse matrix product, no hashing).

Each tool runs as its own process, timed from start to exit, with the peak RSS of its process tree
(sampled every 50 ms): `textbook filter` (exact + MinHash dedup only, its Dask workers included),
rensa (Rust MinHash + in-memory LSH, the query-then-insert loop of its README with a Jaccard check),
datasketch (`MinHash.update` per 5-gram + `MinHashLSH`), and datatrove (its 4 MinHash stages on a
LocalPipelineExecutor with 2 tasks). The peers are installed into ``bench/.venv-peers`` by this script,
never into the project. Every tool uses word 5-grams, 128 permutations, threshold 0.8.

Accuracy, the same for every tool: a removed document is right when its true component
(J >= threshold, chained) holds a kept document; pair recall counts pairs with true J >= 0.85 of
which at least one document was removed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from scipy import sparse
from scipy.sparse.csgraph import connected_components

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import shared_data  # noqa: E402
from dedup_accuracy import EDIT_RATES, perturb, real_texts, say_sources  # noqa: E402

from filters.minhash import dedup_form  # noqa: E402

PEERS_VENV = ROOT / "bench" / ".venv-peers"
PEER_PACKAGES = ["rensa==0.5.0", "datasketch", "datatrove[io]", "regex", "tokenizers", "xxhash", "spacy", "pyarrow", "pandas", "psutil"]
THRESHOLD, NUM_PERM, NGRAM = 0.8, 128, 5


# --- corpus and truth -------------------------------------------------------------------------

def paragraphs() -> list[str]:
    out = []
    for text in real_texts():
        for para in text.split("\n\n"):
            words = para.split()
            if len(words) >= 20:
                out.append(" ".join(words))
    return out


def build_corpus(folder: Path, mb: float, seed: int) -> pd.DataFrame:
    """Documents from runs of consecutive real paragraphs (drawn without overlap while the pool lasts,
    then recombined), a quarter of them copied 1-3 times with word edits; shuffled; written as Parquet."""
    rng = random.Random(seed)
    pool = paragraphs()
    vocabulary = sorted({w for p in pool[:2000] for w in p.split()})
    rows: list[dict] = []
    size, i = 0, 0
    while size < mb * 1e6:
        target = rng.randint(400, 1600)
        words: list[str] = []
        if i < len(pool):
            while len(words) < target and i < len(pool):
                words += pool[i].split()
                i += 1
        else:  # the pool is spent: new documents from random paragraphs (rarely sharing a 5-gram run)
            while len(words) < target:
                words += rng.choice(pool).split()
        text = " ".join(words[:target])
        rows.append({"text": text, "planted_rate": 0.0})
        size += len(text)
        if rng.random() < 0.25:
            for _ in range(rng.choice([1, 1, 2, 3])):
                copy = perturb(rng, text, rng.choice(EDIT_RATES), vocabulary)
                rows.append({"text": copy, "planted_rate": -1.0})
                size += len(copy)
    rng.shuffle(rows)
    corpus = pd.DataFrame(rows)
    corpus.insert(0, "id", [f"d{k:07d}" for k in range(len(corpus))])
    folder.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, len(corpus), 20_000)):
        corpus.iloc[start:start + 20_000][["id", "text"]].to_parquet(folder / f"part-{k:05d}.parquet", index=False)
    return corpus


def true_pairs(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, J) of every pair i < j sharing a word 5-gram, with their exact Jaccard."""
    ids: dict[int, int] = {}
    indptr, indices = [0], []
    for text in texts:
        words = dedup_form(text).split()
        grams = {hash(tuple(words[k:k + NGRAM])) for k in range(max(1, len(words) - NGRAM + 1))}
        indices += [ids.setdefault(g, len(ids)) for g in grams]
        indptr.append(len(indices))
    m = sparse.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr),
                          shape=(len(texts), max(1, len(ids))))
    inter = sparse.triu(m @ m.T, k=1).tocoo()
    sizes = np.asarray(m.sum(axis=1)).ravel()
    jac = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    return inter.row, inter.col, jac


def accuracy(removed_ids: set[str], ids: np.ndarray, pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
             recall_at: float = 0.85) -> dict[str, float]:
    i, j, jac = pairs
    removed = np.isin(ids, list(removed_ids))
    linked = jac >= THRESHOLD
    n = len(ids)
    graph = sparse.coo_matrix((np.ones(linked.sum()), (i[linked], j[linked])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    has_kept = np.zeros(comp.max() + 1, dtype=bool)
    has_kept[comp[~removed]] = True
    correct = removed & has_kept[comp]
    should = n - (comp.max() + 1)
    high = jac >= recall_at
    caught = removed[i[high]] | removed[j[high]]
    return {"removed": int(removed.sum()), "should": int(should),
            "precision": float(correct.sum() / max(1, removed.sum())),
            "pair_recall": float(caught.mean()) if high.any() else float("nan")}


# --- running a process ------------------------------------------------------------------------

CPU_AND_LOAD: list[tuple[float, float]] = []


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS of the process tree in GB); raises with the tail of stderr on failure.
    Also appends the tree's CPU seconds (user + system) and the load average at the start to
    ``CPU_AND_LOAD``: on a shared machine, wall seconds alone do not say what a tool cost."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=cwd)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    out, err = proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_AND_LOAD.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, load))
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}:\n{(out + err)[-3000:]}")
    return seconds, peak / 1e9


def ensure_peers() -> Path:
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing the peers into {PEERS_VENV} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import rensa, datasketch, regex, tokenizers, xxhash, spacy, datatrove.pipeline.dedup"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


# --- the tools --------------------------------------------------------------------------------

PHASES: list[dict[str, float]] = []
"""The per-phase seconds of every textbook run, from its stats.json: where the whole process went."""


def run_textbook(data: Path, work: Path, workers: int, code: str | None = None) -> tuple[float, float, set[str]]:
    run_dir = work / "textbook_run"
    cmd = [str(ROOT / ".venv" / "bin" / "textbook"), "filter", f"run_dir={run_dir}",
           f"filter.input=[{data}/*.parquet]", "filter.include_generated=false", f"workers={workers}",
           "filter.heuristics.enabled=false", "filter.quality.enabled=false", "filter.decontaminate.enabled=false",
           "filter.language.enabled=false",
           f"filter.minhash.threshold={THRESHOLD}", f"filter.minhash.num_perm={NUM_PERM}", f"filter.minhash.ngram={NGRAM}"]
    seconds, peak = run_measured(cmd, env={"TEXTBOOK_PROGRESS_S": "3600", **({"PYTHONPATH": code} if code else {})})
    phases = {k: float(v) for k, v in json.loads((run_dir / "filtered" / "stats.json").read_text())["timings_s"].items()}
    PHASES.append({"code": code or "this checkout", **phases, "other": seconds - sum(phases.values()),
                   "whole": seconds})
    rejected = pd.concat([pd.read_parquet(p, columns=["id", "filter_reason"])
                          for p in sorted((run_dir / "filtered" / "rejected").glob("part-*.parquet"))])
    return seconds, peak, set(rejected.loc[rejected["filter_reason"].isin(["exact_dup", "near_dup"]), "id"])


RENSA = """
import glob, json, sys
import pyarrow.parquet as pq
from rensa import RMinHash, RMinHashLSH
data, out, t, perms, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ids, texts = [], []
for f in sorted(glob.glob(data + "/*.parquet")):
    table = pq.read_table(f, columns=["id", "text"])
    ids += table.column("id").to_pylist(); texts += table.column("text").to_pylist()
def shingles(text):
    w = text.lower().split()
    return [" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))]
hashes = RMinHash.from_token_sets((shingles(t_) for t_ in texts), perms, 42)
lsh = RMinHashLSH(t, perms, 16)
removed = []
for k, m in enumerate(hashes):
    if any(m.jaccard(hashes[c]) >= t for c in lsh.query(m)):
        removed.append(ids[k])
    else:
        lsh.insert(k, m)
json.dump(removed, open(out, "w"))
"""

DATASKETCH = """
import glob, json, sys
import pyarrow.parquet as pq
from datasketch import MinHash, MinHashLSH
data, out, t, perms, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lsh = MinHashLSH(threshold=t, num_perm=perms)
removed, hashes = [], {}
for f in sorted(glob.glob(data + "/*.parquet")):
    table = pq.read_table(f, columns=["id", "text"])
    for doc_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist()):
        w = text.lower().split()
        m = MinHash(num_perm=perms, seed=1)
        m.update_batch([" ".join(w[i:i + n]).encode() for i in range(max(1, len(w) - n + 1))])
        if any(m.jaccard(hashes[c]) >= t for c in lsh.query(m)):
            removed.append(doc_id)
        else:
            lsh.insert(doc_id, m)
            hashes[doc_id] = m
json.dump(removed, open(out, "w"))
"""

DATATROVE = """
import glob, json, sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
data, work, tasks = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=14, hashes_per_bucket=9, n_grams=5)
read = lambda: ParquetReader(data, glob_pattern="*.parquet", id_key="id", text_key="text")
run = lambda steps, n, name: LocalPipelineExecutor(pipeline=steps, tasks=n, workers=tasks,
                                                   logging_dir=f"{work}/logs/{name}", skip_completed=False).run()
run([read(), MinhashDedupSignature(output_folder=f"{work}/sigs", config=config)], tasks, "sigs")
run([MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=config)],
    config.num_buckets, "buckets")
run([MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=config)], 1,
    "cluster")
run([read(), MinhashDedupFilter(input_folder=f"{work}/remove_ids",
                                exclusion_writer=JsonlWriter(f"{work}/removed", compression=None))], tasks, "filter")
removed = []
for f in glob.glob(f"{work}/removed/*.jsonl"):
    removed += [json.loads(line)["id"] for line in open(f)]
json.dump(removed, open(f"{work}/removed.json", "w"))
"""


def run_script(python: Path, script: str, args: list[str], work: Path, name: str) -> tuple[float, float, set[str]]:
    path = work / f"run_{name}.py"  # not the module's own name, which the script imports
    path.write_text(textwrap.dedent(script))
    seconds, peak = run_measured([str(python), str(path), *args])
    out = Path(args[1]) if name != "datatrove" else Path(args[1]) / "removed.json"
    return seconds, peak, set(json.loads(out.read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=40)
    ap.add_argument("--tools", default="textbook,rensa,datatrove,datasketch")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--code", action="append", default=[], metavar="NAME=PATH",
                    help="another checkout, run as the tool textbook@NAME")
    shared_data.add_argument(ap)
    args = ap.parse_args()
    shared_data.use(args.data)
    say_sources()
    tools = args.tools.split(",")
    checkouts = dict(c.split("=", 1) for c in args.code)
    python = ensure_peers() if {t.split("@")[0] for t in tools} - {"textbook"} else None
    with tempfile.TemporaryDirectory(prefix="dedup_peers_") as tmp:
        work = Path(tmp)
        data = work / "data"
        t0 = time.perf_counter()
        corpus = build_corpus(data, args.mb, args.seed)
        mb = corpus["text"].str.len().sum() / 1e6
        print(f"corpus: {len(corpus):,} documents, {mb:.1f} MB in {len(list(data.glob('*.parquet')))} Parquet "
              f"files ({(corpus['planted_rate'] < 0).sum():,} planted copies), {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        pairs = true_pairs(corpus["text"].tolist())
        print(f"truth: {len(pairs[2]):,} pairs share a 5-gram, {(pairs[2] >= THRESHOLD).sum():,} at J >= {THRESHOLD} "
              f"({time.perf_counter() - t0:.0f} s)")
        ids = corpus["id"].to_numpy()
        results = []
        for rep in range(args.repeat):
            for tool in tools:
                scratch = work / f"{tool}-{rep}"
                scratch.mkdir()
                if tool.split("@")[0] == "textbook":
                    code = checkouts[tool.split("@")[1]] if "@" in tool else None
                    seconds, peak, removed = run_textbook(data, scratch, args.workers, code)
                elif tool == "rensa":
                    seconds, peak, removed = run_script(python, RENSA, [str(data), str(scratch / "removed.json"),
                                                        str(THRESHOLD), str(NUM_PERM), str(NGRAM)], scratch, tool)
                elif tool == "datasketch":
                    seconds, peak, removed = run_script(python, DATASKETCH, [str(data), str(scratch / "removed.json"),
                                                        str(THRESHOLD), str(NUM_PERM), str(NGRAM)], scratch, tool)
                elif tool == "datatrove":
                    seconds, peak, removed = run_script(python, DATATROVE, [str(data), str(scratch),
                                                        str(args.workers)], scratch, tool)
                else:
                    raise SystemExit(f"unknown tool {tool!r}")
                acc = accuracy(removed, ids, pairs)
                acc.update(zip(("cpu", "load"), CPU_AND_LOAD[-1], strict=True))
                results.append((tool, rep, seconds, peak, acc))
                print(f"  {tool} run {rep + 1}: {seconds:.1f} s, peak {peak:.2f} GB, removed {acc['removed']}, "
                      f"precision {acc['precision']:.3f}, pair recall {acc['pair_recall']:.3f}", flush=True)
    base = {rep: s for tool, rep, s, _, _ in results if tool == "textbook"}
    rensa = {rep: s for tool, rep, s, _, _ in results if tool == "rensa"}
    print(f"\n{mb:.0f} MB, {len(corpus):,} documents, 2 cores; threshold {THRESHOLD}, word {NGRAM}-grams, "
          f"{NUM_PERM} permutations; every run listed")
    print(f"{'tool':<16}{'run':>4}{'seconds':>9}{'vs textbook':>13}{'rensa/this':>11}{'cpu s':>7}{'load':>6}{'peak GB':>9}{'removed':>9}"
          f"{'should':>8}{'precision':>11}{'recall@.85':>12}")
    for tool, rep, seconds, peak, acc in results:
        ratio = seconds / base[rep] if rep in base else float("nan")
        against = rensa[rep] / seconds if rep in rensa else float("nan")
        print(f"{tool:<16}{rep + 1:>4}{seconds:>9.1f}{ratio:>12.2f}x{against:>10.2f}x{acc['cpu']:>7.1f}{acc['load']:>6.1f}{peak:>9.2f}"
              f"{acc['removed']:>9}{acc['should']:>8}{acc['precision']:>11.3f}{acc['pair_recall']:>12.3f}")
    print("(vs textbook: a tool's seconds over textbook's in the same round; above 1 means textbook is faster; "
          "rensa/this: rensa's seconds in the same round over the tool's, above 1 means the tool is faster; "
          "cpu s: user + system seconds of the process tree; load: 1-minute load average when the run started)")
    if PHASES:
        names = list(dict.fromkeys(k for p in PHASES for k in p))
        print("\ntextbook filter, wall seconds per phase (stats.json timings_s; other = imports, cluster start "
              "and stop, report, manifests)")
        names.remove("code")
        print(f"{'run':>4}{'code':>16}" + "".join(f"{n[:13]:>14}" for n in names))
        for k, p in enumerate(PHASES):
            print(f"{k + 1:>4}{p['code'][-16:]:>16}" + "".join(f"{p.get(n, 0.0):>14.2f}" for n in names))


if __name__ == "__main__":
    main()
