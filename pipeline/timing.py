"""Wall-clock seconds per named step, for the timings that stages record in their stats."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def timed(clock: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds the block takes to ``clock[name]`` (steps run more than once add up)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - start
