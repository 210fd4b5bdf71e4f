"""A killed driver: `textbook filter` killed (SIGKILL) between two dedup passes resumes at the first
unfinished one, leaves the finished ones untouched, and writes the outputs an unbroken run writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.io import read_shards

BIN = Path(sys.executable).parent


def textbook(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "textbook", "filter", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


def outputs(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = run_dir / "filtered"
    return (read_shards(out).sort_values("id", ignore_index=True),
            read_shards(out / "rejected").sort_values("id", ignore_index=True))


def assert_same_outputs(run_dir: Path, reference: Path) -> None:
    kept, rejected = outputs(run_dir)
    kept_ref, rejected_ref = outputs(reference)
    pd.testing.assert_frame_equal(kept, kept_ref)
    pd.testing.assert_frame_equal(rejected, rejected_ref)
    assert {"exact_dup", "near_dup"} <= set(rejected.filter_reason)


def wait_for(condition, what: str, deadline_s: float = 300) -> None:
    """Wait until ``condition()`` holds (a file or a line on disk), failing after a generous deadline."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("after", ["hashes", "members", "large-1"])
def test_a_killed_driver_resumes_at_the_first_unfinished_pass(dedup_corpus: dict, tmp_path: Path, after: str) -> None:
    done = textbook([*dedup_corpus["overrides"], f"run_dir={tmp_path / 'reference'}"])
    assert done.returncode == 0, done.stderr[-2000:]

    run_dir = tmp_path / "run"
    dedup = run_dir / "filtered" / "dedup"
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([BIN / "textbook", "filter", *dedup_corpus["overrides"], f"run_dir={run_dir}"],
                                  stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "TEXTBOOK_FAULT": f"pause-after:{after}"})
        try:  # the driver stops right after the pass's record: kill it there
            wait_for(lambda: f"paused after pass {after}" in log.read_text(), f"the pause after {after}")
            assert (dedup / after / "manifest.json").exists()
        finally:
            driver.send_signal(signal.SIGKILL)
            driver.wait()
    recorded = {p.parent.name: p.stat().st_mtime_ns for p in dedup.glob("*/manifest.json")}
    # the pass after it was under way when a driver dies mid-pass: a folder of partial files, no record
    following = {"hashes": "exact", "members": "edges", "large-1": "small-1"}[after]
    (dedup / following).mkdir(exist_ok=True)
    (dedup / following / "part-00000.arrow").write_bytes(b"half a file")

    rerun = textbook([*dedup_corpus["overrides"], f"run_dir={run_dir}"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "already scored" in rerun.stdout
    assert f"dedup resumes at pass {following} ({len(recorded)} passes done before" in rerun.stdout
    assert_same_outputs(run_dir, tmp_path / "reference")
    assert not dedup.exists()  # the passes' files go once the outputs are in place
    assert recorded and after in recorded and following not in recorded
