"""The filter stage on an existing dask.distributed cluster: a scheduler and two workers as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client

from pipeline.io import read_shards

BIN = Path(sys.executable).parent


@pytest.fixture
def external_cluster(tmp_path: Path) -> Iterator[str]:
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1; yields the scheduler address."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    scheduler_file = tmp_path / "scheduler.json"
    logs = open(tmp_path / "cluster.log", "wb")  # noqa: SIM115 - closed in finally
    procs = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", scheduler_file], stdout=logs, stderr=logs, env=env)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "scheduler did not start"
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            worker = [BIN / "dask", "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-nanny",
                      "--host", "127.0.0.1", "--no-dashboard"]
            procs.append(subprocess.Popen(worker, stdout=logs, stderr=logs, env=env))
        with Client(address, timeout="300s") as client:
            client.wait_for_workers(2, timeout=600)
        yield address
    finally:
        for p in reversed(procs):  # workers first, while their scheduler is still there to say goodbye to
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        logs.close()


@pytest.mark.light
def test_textbook_filter_runs_on_an_existing_cluster(planted: dict, external_cluster: str) -> None:
    args = [*planted["overrides"], "filter.minhash.enabled=true"]
    done = subprocess.run([BIN / "textbook", "filter", "--scheduler", external_cluster, *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bands x" in done.stdout and "kept" in done.stdout

    out = planted["run"] / "filtered"
    kept, rejected = read_shards(out), read_shards(out / "rejected")
    reasons = set(rejected.filter_reason)
    assert {"exact_dup", "near_dup", "decontam:gsm8k", "length:empty"} <= reasons
    assert len(kept) + len(rejected) == 49
    with Client(external_cluster) as client:  # both worker processes did filter work
        ran = client.run(lambda: "pipeline.filter.inputs" in sys.modules)
    assert len(ran) == 2 and all(ran.values())
