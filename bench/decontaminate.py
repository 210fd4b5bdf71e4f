"""Decontamination throughput and index memory: the sorted-hash index against a dict of n-gram tuples.

    .venv/bin/python bench/decontaminate.py [--web PATH.jsonl ...] [--benchmarks DIR] [--data DIR]

Real text (the web pages of ``--data`` by default, see bench/shared_data.py; Python's documentation
stands in without them) checked against GSM8K, HumanEval and MMLU test sets (local files; without
GSM8K, questions made of man-page paragraphs stand in, as many as GSM8K has). The baseline is what one writes first: ``{13-gram tuple: item}`` in a Python dict,
every document's 13-grams looked up, candidates verified with the same difflib step. Prints a
table and the speed and memory ratios; both must find the same documents.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
import time
import tracemalloc
from difflib import SequenceMatcher
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import shared_data  # noqa: E402

from filters.decontaminate import BenchmarkIndex, words  # noqa: E402
from filters.normalize import normalize_text  # noqa: E402
from pipeline.filter.benchmarks import load_benchmark  # noqa: E402
from pipeline.filter.config import BenchmarkConfig  # noqa: E402
from pipeline.io import expand_inputs, iter_batches  # noqa: E402

GSM8K_ITEMS = 1319


class DictIndex:
    """Baseline: a dict from n-gram tuples to (segment, position)."""

    def __init__(self, benchmarks: dict[str, list[list[str]]], ngram: int = 13, min_ratio: float = 0.5):
        self.n, self.min_ratio, self.grams, self.segments = ngram, min_ratio, {}, []
        for name, items in benchmarks.items():
            for item, segments in enumerate(items):
                for seg in segments:
                    tokens = words(seg)
                    for i in range(len(tokens) - ngram + 1):
                        self.grams.setdefault(tuple(tokens[i:i + ngram]), (len(self.segments), i))
                    self.segments.append((name, item, tokens))

    def find(self, text: str) -> set[tuple[str, int]]:
        tokens, hits = words(text), set()
        for i in range(len(tokens) - self.n + 1):
            found = self.grams.get(tuple(tokens[i:i + self.n]))
            if found:
                name, item, seg = self.segments[found[0]]
                start = max(i - found[1], 0)
                if SequenceMatcher(None, seg, tokens[start:start + len(seg)], autojunk=False).ratio() >= self.min_ratio:
                    hits.add((name, item))
        return hits


def build(cls, benchmarks):
    tracemalloc.start()
    start = time.perf_counter()
    index = cls(benchmarks)
    seconds = time.perf_counter() - start
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return index, seconds, memory


def default_web(given: Path | None, work: Path) -> list[str]:
    folder = shared_data.find("web", "web pages", given, stand_in="Python's documentation")
    if folder is not None:
        return [str(folder / "*.jsonl")]
    path = work / "python_docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in shared_data.python_docs()), encoding="utf-8")
    return [str(path)]


def default_benchmarks(given: Path | None, work: Path) -> Path:
    found = shared_data.find("benchmarks/gsm8k_test.jsonl", "GSM8K test questions", given,
                             stand_in=f"{GSM8K_ITEMS:,} questions made of man-page paragraphs")
    if found is not None:
        return found.parent
    paragraphs = [p for text in shared_data.man_pages() for p in text.split("\n\n") if len(p.split()) >= 20]
    (work / "gsm8k_test.jsonl").write_text("".join(
        json.dumps({"question": q, "answer": a}) + "\n"
        for q, a in zip(paragraphs[0:2 * GSM8K_ITEMS:2], paragraphs[1:2 * GSM8K_ITEMS:2], strict=False)))
    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--web", nargs="+", help="JSONL/Parquet web text (default: the web pages of --data)")
    parser.add_argument("--benchmarks", help="folder of benchmark files (default: benchmarks/ of --data)")
    shared_data.add_argument(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-decontaminate-"))
    web = args.web or default_web(args.data, work)
    root = Path(args.benchmarks) if args.benchmarks else default_benchmarks(args.data, work)
    configs = [BenchmarkConfig(name="gsm8k", path=str(root / "gsm8k_test.jsonl")),
               BenchmarkConfig(name="humaneval", path=str(root / "HumanEval.jsonl.gz")),
               BenchmarkConfig(name="mmlu", path=str(root / "mmlu" / "test" / "*.csv"),
                               columns=["question", "choice0", "choice1", "choice2", "choice3"])]
    benchmarks = {c.name: load_benchmark(c) for c in configs if glob.glob(c.path)}
    texts = [normalize_text(t) for f in expand_inputs(web) for b in iter_batches(f, ["text"])
             for t in b["text"]]
    # plant contamination: every 50th document quotes a GSM8K question, as a worked example would
    gsm = benchmarks["gsm8k"]
    texts = [t + ("\n\nExercise: " + gsm[i // 50][0] if i % 50 == 0 else "") for i, t in enumerate(texts)]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    rows = []
    for name, cls in (("dict of tuples (baseline)", DictIndex), ("sorted uint64 hashes", BenchmarkIndex)):
        index, build_s, memory = build(cls, benchmarks)
        start = time.perf_counter()
        found = [{(h.benchmark, h.item) for h in index.find(t)} if cls is BenchmarkIndex else index.find(t)
                 for t in texts]
        seconds = time.perf_counter() - start
        rows.append((name, build_s, memory / 2**20, mb / seconds, sum(bool(f) for f in found), found))
    print(f"{len(texts):,} documents, {mb:.1f} MB; benchmarks: "
          + ", ".join(f"{k} {len(v):,} items" for k, v in benchmarks.items()))
    print(f"{'index':28s} {'build s':>8s} {'index MiB':>10s} {'MB/s':>8s} {'docs hit':>9s}")
    for name, build_s, mib, rate, hit, _ in rows:
        print(f"{name:28s} {build_s:8.2f} {mib:10.1f} {rate:8.2f} {hit:9d}")
    base, ours = rows
    print(f"speed ratio {ours[3] / base[3]:.2f}x, index memory ratio {base[2] / ours[2]:.2f}x smaller, "
          f"same documents hit: {base[5] == ours[5]}")


if __name__ == "__main__":
    main()
