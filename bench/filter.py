"""Filter-stage throughput: MinHash dedup MB/s per core against a hand-written datasketch baseline,
1 vs 2 workers, and peak memory per worker at two corpus sizes (it must not grow with the corpus).

The corpus is real prose (Python docs, man pages, news articles; see bench/dedup_accuracy.py)
recombined and perturbed into ``--mb`` MB of documents (3-6 paragraphs, 3% word edits, 3% planted
near-duplicates), written as Parquet shards to a temp dir. The baseline is the textbook datasketch
loop: ``MinHash.update`` per 5-gram (sha1), then ``MinHashLSH.query`` + ``insert`` per document in
one in-memory index; it runs on a ``--baseline-mb`` subset and is extrapolated (it is that slow).

    .venv/bin/python bench/filter.py [--quick] [--mb 200] [--no-stage] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dedup_accuracy import perturb, real_documents  # noqa: E402

from filters.minhash import dedup_form, minhash_signatures  # noqa: E402
from pipeline.cluster import dask_client  # noqa: E402
from pipeline.filter.dedup import exact_dedup, minhash_dedup  # noqa: E402

SHARD_MB = 8


def build_corpus(folder: Path, megabytes: float, seed: int = 0) -> list[Path]:
    """Write ~``megabytes`` MB of documents as Parquet shards of ~SHARD_MB MB; returns the shards."""
    rng = random.Random(seed)
    pool = real_documents(6000, min_words=40, max_words=250, seed=seed)
    vocabulary = sorted({w for d in pool[:300] for w in d.split()})
    variants = [perturb(rng, p, 0.03, vocabulary) for p in pool for _ in range(2)]
    folder.mkdir(parents=True, exist_ok=True)
    shards, docs, size, total, n = [], [], 0, 0, 0
    while total < megabytes * 1e6:
        if docs and rng.random() < 0.03:
            text = perturb(rng, rng.choice(docs), 0.005, vocabulary)
        else:
            text = "\n\n".join(rng.sample(variants, rng.randint(3, 6)))
        docs.append(text)
        size += len(text.encode())
        total += len(text.encode())
        if size >= SHARD_MB * 1e6 or total >= megabytes * 1e6:
            frame = pd.DataFrame({"id": [f"doc-{n + i:08d}" for i in range(len(docs))], "text": docs,
                                  "edu_score": np.round(np.random.default_rng(n).random(len(docs)), 4)})
            path = folder / f"part-{len(shards):05d}.parquet"
            frame.to_parquet(path, index=False)
            shards.append(path)
            n += len(docs)
            docs, size = [], 0
    return shards


def corpus_mb(shards: list[Path]) -> float:
    """UTF-8 megabytes of text in ``shards``."""
    return sum(len(t.encode()) for p in shards for t in pd.read_parquet(p, columns=["text"])["text"]) / 1e6


class WorkerMemory:
    """Samples the RSS of every worker process every ``interval`` seconds; ``peak`` per worker (MB).

    Reads the processes' RSS directly (psutil), not through the cluster, so sampling costs the
    measured workers nothing.
    """

    def __init__(self, client, interval: float = 0.1):
        self.processes = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        self.interval, self.peak = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for process in self.processes:
                with suppress(psutil.Error):  # a sample lost while the cluster shuts down is not a result
                    self.peak[process.pid] = max(self.peak.get(process.pid, 0), process.memory_info().rss / 1e6)
            self._stop.wait(self.interval)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_ours(shards: list[Path], workers: int, exact: bool = False) -> dict:
    """MinHash dedup of ``shards`` on a fresh LocalCluster of ``workers`` processes."""
    with dask_client(workers=workers) as client:
        client.run(lambda: None)
        with WorkerMemory(client) as memory:
            ddf = dd.read_parquet([str(p) for p in shards])
            stats: dict = {}
            t0 = time.perf_counter()
            flagged = exact_dedup(ddf)["exact_dup"] if exact else minhash_dedup(ddf, stats=stats)["near_dup"]
            # optimize() fuses read + flag + count into one task per partition, as the stage's
            # to_delayed() does; dask 2026.8's compute() alone leaves them four tasks each
            removed = int(flagged.sum().optimize().compute())
            seconds = time.perf_counter() - t0
    return {"seconds": seconds, "removed": removed, "stats": stats,
            "peak_mb": max(memory.peak.values()) if memory.peak else float("nan")}


def _shard_signatures(path: str) -> float:
    start = time.perf_counter()
    minhash_signatures(pd.read_parquet(path, columns=["text"])["text"])
    return time.perf_counter() - start


def run_control(shards: list[Path], workers: int) -> float:
    """Seconds for signatures alone, one plain task per shard (no Dask DataFrame, no shuffle): the
    machine's own scaling ceiling for this CPU-bound work."""
    with dask_client(workers=workers) as client:
        client.run(lambda: None)
        start = time.perf_counter()
        client.gather(client.map(_shard_signatures, [str(p) for p in shards], pure=False))
        return time.perf_counter() - start


def run_baseline(shards: list[Path], megabytes: float) -> dict:
    """The datasketch loop on the first ``megabytes`` MB: per-shingle update + one in-memory LSH."""
    from datasketch import MinHash, MinHashLSH

    texts: list[str] = []
    size = 0.0
    for path in shards:
        for text in pd.read_parquet(path, columns=["text"])["text"]:
            texts.append(text)
            size += len(text.encode()) / 1e6
            if size >= megabytes:
                break
        if size >= megabytes:
            break
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    removed = 0
    t0 = time.perf_counter()
    for i, text in enumerate(texts):
        words = dedup_form(text).split()
        m = MinHash(num_perm=128, seed=0)
        for j in range(max(1, len(words) - 4)):
            m.update(" ".join(words[j:j + 5]).encode("utf-8"))
        if lsh.query(m):
            removed += 1
        else:
            lsh.insert(str(i), m)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "mb": size, "removed": removed, "docs": len(texts)}


def run_stage(shards: list[Path], run_dir: Path, workers: int) -> float | None:
    """Seconds for the whole `textbook filter` stage (no edu model, no benchmarks) or None if absent."""
    try:
        from pipeline.config import load_config
        from pipeline.filter.runner import run_filter
    except ImportError:
        return None
    cfg = load_config(None, [f"run_dir={run_dir}", f"workers={workers}",
                             f"filter.input=[{','.join(str(p) for p in shards)}]",
                             "filter.quality.enabled=false", "filter.decontaminate.enabled=false"])
    t0 = time.perf_counter()
    run_filter(cfg)
    return time.perf_counter() - t0


def main() -> None:
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # shutdown chatter is not a result
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpus (20 MB) for development")
    parser.add_argument("--mb", type=float, default=200.0, help="corpus size in MB")
    parser.add_argument("--baseline-mb", type=float, default=3.0, help="datasketch baseline subset")
    parser.add_argument("--no-stage", action="store_true", help="skip timing the whole filter stage")
    parser.add_argument("--repeat", type=int, default=3, help="1-vs-2-worker pairs to run (median reported)")
    args = parser.parse_args()
    megabytes = 20.0 if args.quick else args.mb
    baseline_mb = 0.5 if args.quick else args.baseline_mb
    root = Path(tempfile.mkdtemp(prefix="bench-filter-"))
    try:
        t0 = time.perf_counter()
        shards = build_corpus(root / "corpus", megabytes)
        half = shards[:max(1, len(shards) // 2)]
        full_mb, half_mb = corpus_mb(shards), corpus_mb(half)
        print(f"corpus: {full_mb:.0f} MB in {len(shards)} shards of ~{SHARD_MB} MB "
              f"(built in {time.perf_counter() - t0:.0f} s); {os.cpu_count()} CPUs, "
              f"load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")

        base = run_baseline(shards, baseline_mb)
        base_rate = base["mb"] / base["seconds"]
        # 1 vs 2 workers, repeated: on a shared VM a single pair swings by +-10%; the median pair is
        # the result and every ratio is printed
        rounds = []
        for _ in range(args.repeat):
            control = {w: run_control(shards, w) for w in (1, 2)}
            rounds.append((control, run_ours(shards, workers=1), run_ours(shards, workers=2)))
        rounds.sort(key=lambda r: r[1]["seconds"] / r[2]["seconds"])
        control, one, two = rounds[len(rounds) // 2]
        small = run_ours(half, workers=2)
        exact = run_ours(shards, workers=2, exact=True)
        # fresh run dirs: a second run in the same one would resume, not filter
        stage = {} if args.no_stage else {w: run_stage(shards, root / f"run-{w}", workers=w) for w in (1, 2)}
        st = two["stats"]
        print(f"minhash: threshold {st['threshold']}, {st['num_perm']} perms -> {st['bands']} bands x "
              f"{st['rows']} rows; {st['candidate_pairs']} candidate pairs, {st['verified_pairs']} verified, "
              f"{st['clusters']} clusters, {st['removed']} removed")

        rows = [("datasketch baseline (update loop + MinHashLSH)", 1, base["mb"], base["seconds"]),
                ("control: signatures only, plain tasks, 1 worker", 1, full_mb, control[1]),
                ("control: signatures only, plain tasks, 2 workers", 2, full_mb, control[2]),
                ("minhash_dedup, 1 worker", 1, full_mb, one["seconds"]),
                ("minhash_dedup, 2 workers", 2, full_mb, two["seconds"]),
                ("minhash_dedup, 2 workers, half corpus", 2, half_mb, small["seconds"]),
                ("exact_dedup, 2 workers", 2, full_mb, exact["seconds"])]
        rows += [(f"whole filter stage (no edu model), {w} worker{'s' * (w > 1)}", w, full_mb, seconds)
                 for w, seconds in stage.items() if seconds is not None]
        print(f"\n{'run':<46}{'cores':>6}{'MB':>8}{'s':>8}{'MB/s':>8}{'MB/s/core':>10}{'vs base':>9}")
        for name, cores, mb, seconds in rows:
            rate = mb / seconds
            print(f"{name:<46}{cores:>6}{mb:>8.1f}{seconds:>8.1f}{rate:>8.2f}{rate / cores:>10.2f}"
                  f"{rate / cores / base_rate:>8.1f}x")
        print(f"\nbaseline measured on {base['mb']:.1f} MB ({base['docs']} docs); extrapolated to {full_mb:.0f} MB: "
              f"{full_mb / base_rate / 60:.0f} min on one core")
        ratios = ", ".join(f"{r[1]['seconds'] / r[2]['seconds']:.2f}" for r in rounds)
        ceilings = ", ".join(f"{r[0][1] / r[0][2]:.2f}" for r in rounds)
        print(f"speed-up per core vs datasketch: {one['seconds'] and (full_mb / one['seconds']) / base_rate:.1f}x "
              f"(target >= 20x); 2 workers vs 1: {one['seconds'] / two['seconds']:.2f}x, the median of "
              f"{ratios} (target >= 1.7x); machine ceiling (control, 2 vs 1 workers): {ceilings}")
        if stage.get(1) and stage.get(2):
            print(f"whole filter stage, 2 workers vs 1: {stage[1] / stage[2]:.2f}x")
        print(f"phase seconds, 1 worker: {one['stats']['seconds']}; 2 workers: {st['seconds']}")
        print(f"peak RSS per worker: {small['peak_mb']:.0f} MB at {half_mb:.0f} MB corpus, "
              f"{two['peak_mb']:.0f} MB at {full_mb:.0f} MB corpus (1 worker: {one['peak_mb']:.0f} MB); "
              f"partitions ~{SHARD_MB} MB of text")
        print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
