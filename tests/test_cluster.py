"""The LocalCluster that ``dask_client`` starts, and the in-process ``ThreadClient``."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np

from pipeline.cluster import QUIET_CLUSTER, dask_client


def _page_faults_per_temporary(rounds: int = 6, size: int = 32 << 20) -> list[int]:
    """Minor page faults of each of ``rounds`` allocate-fill-free cycles of a ``size``-byte array."""
    faults = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        temporary = np.ones(size, dtype=np.uint8)
        del temporary
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


def test_workers_reuse_large_temporaries_instead_of_refaulting_them():
    # Under dask's default MALLOC_TRIM_THRESHOLD_ every such array is mmapped and unmapped, so each
    # cycle faults in all its pages again (>= 16 even with 2 MiB transparent huge pages).
    with dask_client(workers=1) as client:
        faults = client.submit(_page_faults_per_temporary, pure=False).result()
    assert min(faults[2:]) == 0, faults


def _worker_settings() -> dict[str, object]:
    return {key: dask.config.get(key) for key in QUIET_CLUSTER}


def test_workers_run_without_the_dashboard_profiler_and_fast_ticks_unless_the_user_sets_them():
    # the profiler samples every worker's stack every 10 ms: CPU the workers of a 2-core machine share
    with dask_client(workers=1) as client:
        quiet = client.submit(_worker_settings, pure=False).result()
    assert quiet == QUIET_CLUSTER
    with dask.config.set({"distributed.admin.tick.interval": "100ms"}), dask_client(workers=1) as client:
        chosen = client.submit(_worker_settings, pure=False).result()
    assert chosen == {**QUIET_CLUSTER, "distributed.admin.tick.interval": "100ms"}


def test_thread_client_runs_tasks_and_graphs_without_distributed() -> None:
    """The in-process client answers what the filter stage asks, and never imports distributed."""
    script = """
import sys, dask
from pipeline.cluster import as_completed, local_threads
with local_threads(2) as client:
    assert client.scheduler_info()["workers"]["threads"]["nthreads"] == 2
    assert client.gather(client.map(pow, [2, 3], [3, 2], pure=False)) == [8, 9]
    done = sorted(f.result() for f in as_completed([client.submit(len, "abc", pure=False)]))
    graphs = [dask.delayed(sum)([1, 2, n]) for n in range(3)]
    assert sorted(f.result() for f in as_completed(client.compute(graphs))) == [3, 4, 5]
    assert dask.compute(dask.delayed(max)(4, 7))[0] == 7 and done == [3]
print("distributed" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
