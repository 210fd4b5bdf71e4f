"""The Dask client every stage runs on: a LocalCluster by default, or an existing scheduler.

Worker processes keep heavy objects (a fastText model, a tokenizer) in a per-process cache,
so they are loaded once per worker rather than once per task.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from distributed import Client, LocalCluster

from pipeline.errors import PipelineError

T = TypeVar("T")
_WORKER_CACHE: dict[Any, Any] = {}


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Client]:
    """Connect to ``scheduler`` if given, else start a LocalCluster of one process per core."""
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as e:
            raise PipelineError(f"scheduler {scheduler}: cannot connect ({e})") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or os.cpu_count() or 1
    # Task errors reach the client as exceptions and are reported there on one line; the workers'
    # own "Compute Failed" tracebacks would only bury that line.
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        yield client


def worker_cached(key: Any, factory: Callable[[], T]) -> T:
    """Build ``factory()`` once per worker process and reuse it for every later task."""
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = factory()
    return _WORKER_CACHE[key]
