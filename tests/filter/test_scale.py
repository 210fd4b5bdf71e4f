"""The filter stage on an existing dask.distributed cluster: a scheduler and workers as processes,
workers killed mid-dedup, and a driver left with no worker at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client

from pipeline.io import read_shards
from tests.filter.test_resume import assert_same_outputs, textbook, wait_for

BIN = Path(sys.executable).parent


class Cluster:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1, each its own process."""

    def __init__(self, folder: Path) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.logs = open(folder / "cluster.log", "wb")  # noqa: SIM115 - closed in stop()
        scheduler_file = folder / "scheduler.json"
        self.procs = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                        "--no-dashboard", "--scheduler-file", scheduler_file],
                                       stdout=self.logs, stderr=self.logs, env=self.env)]
        wait_for(scheduler_file.exists, "the scheduler", 60)
        self.address = json.loads(scheduler_file.read_text())["address"]

    def worker(self, **env: str) -> subprocess.Popen:
        """A worker without a nanny (one killed stays dead), with ``env`` added to its environment."""
        proc = subprocess.Popen([BIN / "dask", "worker", self.address, "--nworkers", "1", "--nthreads", "1",
                                 "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"],
                                stdout=self.logs, stderr=self.logs, env={**self.env, **env})
        self.procs.append(proc)
        return proc

    def wait_for_workers(self, n: int) -> None:
        with Client(self.address, timeout="300s") as client:
            client.wait_for_workers(n, timeout=600)

    def stop(self) -> None:
        for p in reversed(self.procs):  # workers first, while their scheduler is still there to say goodbye to
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.logs.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def external_cluster(cluster: Cluster) -> str:
    """A scheduler and two workers; yields the scheduler address."""
    cluster.worker()
    cluster.worker()
    cluster.wait_for_workers(2)
    return cluster.address


@pytest.mark.slow
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


def reference(dedup_corpus: dict, tmp_path: Path) -> Path:
    """The outputs of the same run in one process, to compare with."""
    done = textbook([*dedup_corpus["overrides"], f"run_dir={tmp_path / 'reference'}"])
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp_path / "reference"


@pytest.mark.slow
def test_a_worker_killed_mid_dedup_changes_nothing(dedup_corpus: dict, cluster: Cluster, tmp_path: Path) -> None:
    doomed = cluster.worker(TEXTBOOK_FAULT="kill-worker:hashes")  # SIGKILLs itself in its first hashing task
    cluster.worker()
    cluster.wait_for_workers(2)
    run_dir = tmp_path / "run"
    done = textbook(["--scheduler", cluster.address, *dedup_corpus["overrides"], f"run_dir={run_dir}"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert doomed.wait(timeout=60) == -9  # it died mid-pass, with a task in hand
    assert_same_outputs(run_dir, reference(dedup_corpus, tmp_path))
    stats = json.loads((run_dir / "filtered" / "stats.json").read_text())
    assert stats["cluster"] == {"kind": "scheduler", "threads": 2} and stats["minhash"]["clusters"] >= 10


@pytest.mark.slow
def test_with_no_worker_left_the_driver_says_so_and_a_rerun_resumes(dedup_corpus: dict, cluster: Cluster,
                                                                   tmp_path: Path) -> None:
    doomed = cluster.worker(TEXTBOOK_FAULT="kill-worker:members")
    cluster.wait_for_workers(1)
    run_dir = tmp_path / "run"
    args = ["--scheduler", cluster.address, *dedup_corpus["overrides"], f"run_dir={run_dir}"]
    stopped = textbook([*args, "filter.worker_wait_s=1"])
    assert doomed.wait(timeout=60) == -9
    assert stopped.returncode == 2
    assert "filter: no Dask worker is connected; waiting up to 1 s for one (filter.worker_wait_s)" in stopped.stdout
    assert stopped.stderr.strip().splitlines()[-1] == ("error: no Dask worker for 1 s (filter.worker_wait_s); the "
                                                       "work done so far is kept: rerun when workers are back to resume")
    assert (run_dir / "filtered" / "dedup" / "banding" / "manifest.json").exists()

    cluster.worker()
    cluster.wait_for_workers(1)
    rerun = textbook(args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "dedup resumes at pass members" in rerun.stdout
    assert_same_outputs(run_dir, reference(dedup_corpus, tmp_path))


@pytest.mark.slow
def test_a_worker_that_returns_within_the_wait_lets_the_run_go_on(dedup_corpus: dict, cluster: Cluster,
                                                                  tmp_path: Path) -> None:
    doomed = cluster.worker(TEXTBOOK_FAULT="kill-worker:edges")
    cluster.wait_for_workers(1)
    run_dir, log = tmp_path / "run", tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([BIN / "textbook", "filter", "--scheduler", cluster.address,
                                   *dedup_corpus["overrides"], f"run_dir={run_dir}", "filter.worker_wait_s=600"],
                                  stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "no Dask worker is connected; waiting up to 600 s" in log.read_text(), "the waiting line")
            assert doomed.poll() == -9
            cluster.worker()  # back within the wait: the run goes on
            assert driver.wait(timeout=600) == 0, log.read_text()[-2000:]
        finally:
            if driver.poll() is None:
                driver.kill()
    assert "dedup resumes" not in log.read_text()
    assert_same_outputs(run_dir, reference(dedup_corpus, tmp_path))
