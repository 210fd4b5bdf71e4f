"""`import pipeline` makes Arrow's allocator hand freed pages back at once (MIMALLOC_PURGE_DELAY=0):
a stage that reads, rewrites and frees partitions on several threads would otherwise hold far more
than its working set. A value the user exported wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# 200 MB of Arrow arrays allocated and freed: MB held at the peak, and MB still held after
FREE_AFTER_USE = """
import pipeline, os, time
import numpy as np, psutil, pyarrow as pa, pyarrow.compute as pc
process = psutil.Process()
base = process.memory_info().rss
arrays = [pc.add(pa.array(np.ones(1 << 15)), 1) for _ in range(800)]  # 256 KB each, from Arrow's pool
peak = process.memory_info().rss
del arrays
time.sleep(0.05)
print(os.environ["MIMALLOC_PURGE_DELAY"], (peak - base) // 10**6, (process.memory_info().rss - base) // 10**6)
"""


def held(environ: dict[str, str]) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", FREE_AFTER_USE], capture_output=True, text=True, cwd=ROOT,
                         env=environ, timeout=600, check=True)
    delay, peak, after = out.stdout.split()
    return delay, int(peak), int(after)


@pytest.mark.slow
def test_freed_arrow_memory_goes_back_at_once() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "MIMALLOC_PURGE_DELAY"}
    delay, peak, after = held(environ)
    assert delay == "0" and peak >= 150 and after < peak / 2


def test_a_delay_the_user_exported_wins() -> None:
    delay, peak, after = held({**os.environ, "MIMALLOC_PURGE_DELAY": "60000"})
    assert delay == "60000" and peak >= 150 and after > peak / 2  # kept, as the user asked
