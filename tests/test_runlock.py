"""One writer per run directory: a second run stops in one line naming the live one; a dead one's
lock is taken over. Every process here is real, and so is the lock (flock on RUN_DIR/.lock)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.io import read_shards
from pipeline.llm.stub_server import StubServer
from tests.conftest import holding_run_dir

ROOT = Path(__file__).resolve().parents[1]
PLAIN = "generate.templates={textbook: 0.5, story: 0.5}"


@pytest.mark.slow
def test_a_second_generate_stops_naming_the_live_one_and_takes_over_after_a_kill(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "pipeline", "generate", f"run_dir={tmp_path}", "generate.model=stub-model",
            "generate.num_samples=40", "generate.concurrency=1", "generate.max_tokens=20", "workers=1", PLAIN]
    with StubServer(latency_s=2.0, api_key="sk-test") as slow, StubServer(api_key="sk-test") as srv:
        env = {**os.environ, "OPENAI_BASE_URL": slow.base_url, "OPENAI_API_KEY": "sk-test"}
        first = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        env["OPENAI_BASE_URL"] = srv.base_url  # the later runs' own server: what they send is theirs
        try:
            deadline = time.monotonic() + 120
            while slow.in_flight < 1:  # the first run holds the lock and has a request out
                assert first.poll() is None and time.monotonic() < deadline, "the first run ended early"
                time.sleep(0.01)
            second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # kill -9: the lock must not outlive it
            first.wait()
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"in use by pid {first.pid} on {socket.gethostname()} (textbook generate" in lines[0]
        assert not srv.requests  # the second run sent nothing

        taken_over = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert taken_over.returncode == 0, taken_over.stderr[-2000:]
    assert len(read_shards(tmp_path / "generated")) == 40


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A run directory held by another live process (pid), as a running stage holds it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with holding_run_dir(run_dir, "textbook train --phase 1") as pid:
        yield run_dir, pid


@pytest.mark.parametrize("stage", [
    ["generate"], ["annotate"], ["train-classifier"], ["filter"], ["train", "--phase", "sft", "--restart"],
    ["compare"], ["eval"], ["card"], ["push", "--dry-run"], ["demo"],
])
@pytest.mark.slow
def test_every_stage_that_writes_refuses_a_run_directory_in_use(held, stage, capsys) -> None:
    run_dir, pid = held
    before = sorted(p.name for p in run_dir.iterdir())
    assert main([*stage, f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"in use by pid {pid} " in err[0] and "(textbook train --phase 1, since" in err[0]
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing touched


def test_read_only_stages_do_not_take_the_lock(held, capsys) -> None:
    run_dir, _ = held
    assert main(["config", f"run_dir={run_dir}"]) == 0
