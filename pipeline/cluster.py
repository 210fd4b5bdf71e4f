"""The Dask client every stage runs on: a LocalCluster by default, or an existing scheduler.

Worker processes keep heavy objects (a fastText model, a tokenizer) in a per-process cache,
so they are loaded once per worker rather than once per task.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
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


def run_on_worker_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on this process's one long-lived event loop (a daemon thread) and wait for it.

    Tasks that talk to a server share the loop, so the clients cached on it (and their kept-alive,
    TLS-negotiated connections) outlive the task: a new shard does not reconnect.
    """
    def start() -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="worker-event-loop", daemon=True).start()
        return loop

    with _LOOP_LOCK:  # two task threads of one worker must not start two loops
        loop = worker_cached(_EVENT_LOOP, start)
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def close_at_exit(aclose: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Run ``aclose()`` on the worker loop when the process exits (a cached client's sessions),
    so it ends its connections rather than warning about them from the garbage collector."""
    def close() -> None:
        loop = _WORKER_CACHE.get(_EVENT_LOOP)
        if loop is not None and loop.is_running():
            # exiting anyway: a failed close must not mask the exit
            with suppress(Exception):
                asyncio.run_coroutine_threadsafe(aclose(), loop).result(timeout=5)

    atexit.register(close)


_EVENT_LOOP = ("event-loop",)  # the worker cache's key for the loop
_LOOP_LOCK = threading.Lock()
