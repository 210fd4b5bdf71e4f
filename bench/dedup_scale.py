"""Dedup at scale: the driver's, each worker's and the scheduler's peak memory, and throughput per core.

    .venv/bin/python bench/dedup_scale.py                         # 100, 200, 400, 1200, 2400 MB; both clusters
    .venv/bin/python bench/dedup_scale.py --mb 100,400 --modes local --repeat 2

The corpora are ``bench/dedup_peers.build_corpus``'s (real English text available offline, a quarter
of the documents copied 1-3 times with word edits), written once as Parquet under ``--data``
(default ``/work/data-bench/dedup_scale/<mb>mb``) and reused. Each run is ``textbook filter`` with
dedup only (exact + MinHash: 128 permutations, word 5-grams, threshold 0.8) as its own process, on

- ``local``: a LocalCluster of 2 single-threaded worker processes (``filter.in_process=false
  workers=2``); the driver process holds the scheduler too;
- ``scheduler``: a ``dask scheduler`` and two ``dask worker --nthreads 1`` processes this script
  starts (with the allocator settings the README asks for), passed as ``--scheduler tcp://...``.

Peak RSS is sampled every 50 ms per process: the driver (the ``textbook`` process alone), each
worker process, the scheduler. Throughput per core is MB of text / wall seconds / 2 worker threads;
``MB/cpu s`` divides by the CPU seconds of every process of the run instead (less sensitive to a
busy machine). Every run is listed, with the 1-minute load average at its start, and the ratios the
scale contract asks for: the driver's peak against its peak at the smallest size, each worker's
peak against the worker peak at 400 MB (the first size at the full ``filter.partition_mb``), and
throughput per core against the 200 MB run of the same mode. ``kept`` is a digest of the kept ids:
it must be the same in every mode and for every code version (``PYTHONPATH`` to an older checkout
runs that code: the script itself only starts processes).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from dedup_peers import NGRAM, NUM_PERM, THRESHOLD, build_corpus  # noqa: E402

BIN = ROOT / ".venv" / "bin"
DATA = Path("/work/data-bench/dedup_scale")
WORKER_ENV = {"MALLOC_TRIM_THRESHOLD_": str(64 << 20), "MALLOC_MMAP_THRESHOLD_": str(64 << 20)}


def corpus(folder: Path, mb: int, seed: int) -> tuple[Path, int, float]:
    """The corpus of ``mb`` MB under ``folder`` (built once); its folder, documents and MB of text."""
    where = folder / f"{mb}mb"
    done = where / "corpus.json"
    if not done.exists():
        t0 = time.perf_counter()
        frame = build_corpus(where / "data", mb, seed)
        done.write_text(json.dumps({"documents": len(frame), "mb": float(frame["text"].str.len().sum() / 1e6),
                                    "seed": seed}))
        print(f"built {where}: {len(frame):,} documents in {time.perf_counter() - t0:.0f} s", flush=True)
        del frame
    info = json.loads(done.read_text())
    return where / "data", info["documents"], info["mb"]


@dataclass
class Sampler:
    """Peak RSS and last CPU seconds of processes, by role."""

    peaks: dict[int, int] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)

    def sample(self, procs: dict[int, str]) -> None:
        for pid, role in procs.items():
            try:
                p = psutil.Process(pid)
                rss, times = p.memory_info().rss, p.cpu_times()
            except psutil.Error:
                continue
            self.roles[pid] = role
            self.peaks[pid] = max(self.peaks.get(pid, 0), rss)
            self.cpu[pid] = times.user + times.system

    def peak(self, role: str) -> list[float]:
        return sorted(v / 1e6 for pid, v in self.peaks.items() if self.roles[pid] == role)


def start_cluster(log: Path) -> tuple[str, list[subprocess.Popen]]:
    """``dask scheduler`` and two ``dask worker --nthreads 1`` processes on 127.0.0.1."""
    out = open(log, "wb")  # noqa: SIM115 - closed when the processes are stopped
    scheduler_file = log.with_suffix(".json")
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(scheduler_file)], stdout=out, stderr=out)]
    deadline = time.monotonic() + 120
    while not scheduler_file.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the scheduler did not start: {log}")
        time.sleep(0.2)
    address = json.loads(scheduler_file.read_text())["address"]
    for _ in range(2):
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                                       "--host", "127.0.0.1"], stdout=out, stderr=out,
                                      env={**os.environ, **WORKER_ENV}))
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(2, timeout=120)
    return address, procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def kept_digest(run_dir: Path) -> tuple[int, str]:
    ids = sorted(i for p in sorted((run_dir / "filtered").glob("part-*.parquet"))
                 for i in pq.read_table(p, columns=["id"])["id"].to_pylist())
    return len(ids), hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]


def run_filter(data: Path, work: Path, mode: str, partition_mb: float | None = None) -> dict:
    """One ``textbook filter`` run, dedup only; its wall and CPU seconds, peaks and kept ids."""
    run_dir = work / "run"
    cmd = [str(BIN / "textbook"), "filter", f"run_dir={run_dir}", f"filter.input=[{data}/*.parquet]",
           "filter.include_generated=false", "filter.heuristics.enabled=false", "filter.quality.enabled=false",
           "filter.decontaminate.enabled=false", "filter.language.enabled=false",
           f"filter.minhash.threshold={THRESHOLD}", f"filter.minhash.num_perm={NUM_PERM}",
           f"filter.minhash.ngram={NGRAM}"] + ([f"filter.partition_mb={partition_mb}"] if partition_mb else [])
    cluster: list[subprocess.Popen] = []
    if mode == "scheduler":
        address, cluster = start_cluster(work / "cluster.log")
        cmd += ["--scheduler", address]
    else:
        cmd += ["filter.in_process=false", "workers=2"]
    sampler = Sampler()
    roles = {p.pid: "scheduler" if k == 0 else "nanny" for k, p in enumerate(cluster)}
    cpu_before = {}
    for pid in roles:
        times = psutil.Process(pid).cpu_times()
        cpu_before[pid] = times.user + times.system
    load = os.getloadavg()[0]
    start = time.perf_counter()
    log = open(work / "textbook.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TEXTBOOK_PROGRESS_S": "3600"})
    try:
        while proc.poll() is None:
            procs = {proc.pid: "driver", **roles}
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    procs[child.pid] = "worker"
                for pid in [p for p, r in roles.items() if r == "nanny"]:
                    for child in psutil.Process(pid).children(recursive=True):
                        procs[child.pid] = "worker"
            except psutil.Error:
                pass
            sampler.sample(procs)
            time.sleep(0.05)
        seconds = time.perf_counter() - start
    finally:
        log.close()
        stop(cluster)
    if proc.returncode != 0:
        raise RuntimeError(f"textbook filter exited {proc.returncode}: {(work / 'textbook.log').read_text()[-3000:]}")
    cpu = sum(v - cpu_before.get(pid, 0.0) for pid, v in sampler.cpu.items())
    kept, digest = kept_digest(run_dir)
    stats = json.loads((run_dir / "filtered" / "stats.json").read_text())
    documents = stats["documents_in"]
    passes = {name: p["bytes"] / documents for name, p in stats.get("passes", {}).items()}
    return {"seconds": seconds, "cpu": cpu, "load": load, "driver": sampler.peak("driver")[-1], "passes": passes,
            "partitions": len(list((run_dir / "filtered").glob("part-*.parquet"))),
            "workers": [w for w in sampler.peak("worker") if w > 60], "scheduler": (sampler.peak("scheduler") or [0])[-1],
            "kept": kept, "digest": digest, "timings": stats["timings_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", default="100,200,400,1200,2400")
    ap.add_argument("--modes", default="local,scheduler")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--partition-mb", default="", help="filter.partition_mb values to run (default: the config's)")
    ap.add_argument("--label", default=os.environ.get("PYTHONPATH", "") and f"PYTHONPATH={os.environ['PYTHONPATH']}"
                    or "this checkout")
    args = ap.parse_args()
    sizes = [int(m) for m in args.mb.split(",")]
    partition_mbs = [float(m) for m in args.partition_mb.split(",") if m] or [None]
    results = []
    for mb in sizes:
        data, documents, text_mb = corpus(args.data, mb, args.seed)
        for rep, mode, partition_mb in itertools.product(range(args.repeat), args.modes.split(","), partition_mbs):
            with tempfile.TemporaryDirectory(prefix="dedup_scale_", dir=args.data) as tmp:
                r = run_filter(data, Path(tmp), mode, partition_mb)
            r.update(mb=mb, text_mb=text_mb, documents=documents, mode=mode, rep=rep + 1, partition_mb=partition_mb)
            results.append(r)
            print(f"  {mb} MB {mode} run {rep + 1} (partition_mb {partition_mb or 'default'}, {r['partitions']} "
                  f"output shards): {r['seconds']:.1f} s, driver {r['driver']:.0f} MB, workers "
                  f"{', '.join(f'{w:.0f}' for w in r['workers'])} MB, scheduler {r['scheduler']:.0f} MB, "
                  f"kept {r['kept']:,} ({r['digest']}), load {r['load']:.1f}", flush=True)
    print(f"\ndedup only (exact + MinHash), 2 worker threads; code: {args.label}; every run listed")
    print(f"{'MB':>6}{'docs':>9}{'mode':>11}{'run':>4}{'parts':>6}{'load':>6}{'seconds':>9}{'MB/s/core':>10}{'MB/cpu s':>9}"
          f"{'driver MB':>10}{'x first':>8}{'workers MB':>13}{'x 400':>7}{'sched MB':>9}{'x 200 tput':>11}"
          f"{'kept':>9}{'digest':>14}")
    for r in results:
        same = [x for x in results if x["mode"] == r["mode"] and x["partition_mb"] == r["partition_mb"]]
        first = next(x for x in same if x["mb"] == min(sizes))
        at400 = [x for x in same if x["mb"] == 400]
        at200 = [x for x in same if x["mb"] == 200]
        tput = r["text_mb"] / r["seconds"] / 2
        worker = max(r["workers"]) if r["workers"] else 0.0
        w400 = max(max(x["workers"]) for x in at400) if at400 and all(x["workers"] for x in at400) else float("nan")
        t200 = max(x["text_mb"] / x["seconds"] / 2 for x in at200) if at200 else float("nan")
        workers = "/".join(f"{w:.0f}" for w in r["workers"]) or "-"
        print(f"{r['mb']:>6}{r['documents']:>9,}{r['mode']:>11}{r['rep']:>4}{r['partitions']:>6}{r['load']:>6.1f}{r['seconds']:>9.1f}"
              f"{tput:>10.2f}{r['text_mb'] / r['cpu']:>9.2f}{r['driver']:>10.0f}{r['driver'] / first['driver']:>8.2f}"
              f"{workers:>13}{worker / w400:>7.2f}{r['scheduler']:>9.0f}{tput / t200:>11.2f}{r['kept']:>9,}"
              f"{r['digest']:>14}")
    print("(x first: driver peak over the driver peak of the smallest size in the same mode; x 400: the largest "
          "worker peak over the largest at 400 MB; x 200 tput: MB/s/core over the best 200 MB run of the mode; "
          "load: 1-minute load average at the run's start)")
    names = list(dict.fromkeys(k for r in results for k in r["passes"]))
    if names:
        print("\nbytes each pass wrote per input document (stats.json passes)")
        print(f"{'MB':>6}{'mode':>11}{'run':>4}{'part MB':>8}" + "".join(f"{n[:9]:>10}" for n in names) + f"{'total':>10}")
        for r in results:
            print(f"{r['mb']:>6}{r['mode']:>11}{r['rep']:>4}{r['partition_mb'] or 0:>8g}"
                  + "".join(f"{r['passes'].get(n, 0.0):>10.1f}" for n in names) + f"{sum(r['passes'].values()):>10.1f}")
    print("\nwall seconds per phase (stats.json timings_s)")
    names = list(dict.fromkeys(k for r in results for k in r["timings"]))
    print(f"{'MB':>6}{'mode':>11}{'run':>4}" + "".join(f"{n[:12]:>13}" for n in names))
    for r in results:
        print(f"{r['mb']:>6}{r['mode']:>11}{r['rep']:>4}" + "".join(f"{r['timings'].get(n, 0.0):>13.2f}" for n in names))


if __name__ == "__main__":
    main()
