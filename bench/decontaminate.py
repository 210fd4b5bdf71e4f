"""Decontamination throughput and index memory: the sorted-hash index against a dict of n-gram tuples.

    .venv/bin/python bench/decontaminate.py [--web PATH.jsonl ...] [--benchmarks DIR]

Real text (the shared web pages by default) checked against GSM8K, HumanEval and MMLU test sets
(local files). The baseline is what one writes first: ``{13-gram tuple: item}`` in a Python dict,
every document's 13-grams looked up, candidates verified with the same difflib step. Prints a
table and the speed and memory ratios; both must find the same documents.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
import tracemalloc
from difflib import SequenceMatcher
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.decontaminate import BenchmarkIndex, words  # noqa: E402
from filters.normalize import normalize_text  # noqa: E402
from pipeline.filter.benchmarks import load_benchmark  # noqa: E402
from pipeline.filter.config import BenchmarkConfig  # noqa: E402
from pipeline.io import expand_inputs, iter_batches  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--web", nargs="+", default=[str(DATA / "web" / "*.jsonl")])
    parser.add_argument("--benchmarks", default=str(DATA / "benchmarks"))
    args = parser.parse_args()
    root = Path(args.benchmarks)
    configs = [BenchmarkConfig(name="gsm8k", path=str(root / "gsm8k_test.jsonl")),
               BenchmarkConfig(name="humaneval", path=str(root / "HumanEval.jsonl.gz")),
               BenchmarkConfig(name="mmlu", path=str(root / "mmlu" / "test" / "*.csv"),
                               columns=["question", "choice0", "choice1", "choice2", "choice3"])]
    benchmarks = {c.name: load_benchmark(c) for c in configs if glob.glob(c.path)}
    texts = [normalize_text(t) for f in expand_inputs(args.web) for b in iter_batches(f, ["text"])
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
