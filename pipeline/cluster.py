"""The Dask client every stage runs on: a LocalCluster by default, or an existing scheduler; for
the filter stage's in-process runs, a `ThreadClient` (threads in this process, no ``distributed``).

Worker processes keep heavy objects (a generation backend, an HTTP client, a benchmark index) in a
per-process cache, so they are loaded once per worker rather than once per task (``filters`` keeps
its own: the edu classifier is cached by `filters.edu_score.load_edu_classifier`).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar

import dask

from pipeline.errors import PipelineError

if TYPE_CHECKING:  # imported where a cluster is started: an in-process run never needs it
    from distributed import Client, LocalCluster

T = TypeVar("T")
_WORKER_CACHE: dict[Any, Any] = {}

# glibc settings for worker processes (read at process start, so set before the nanny spawns one).
# Dask's own default, MALLOC_TRIM_THRESHOLD_=65536, also pins glibc's mmap threshold at 128 KiB:
# every large numpy temporary is then returned to the kernel when freed, and the next task
# page-faults and zeroes it again, in the kernel, where two workers contend. Blocks up to 64 MiB
# now stay in the worker's heap and are reused; peak memory is unchanged (it is set by the largest
# task), only the kernel round-trips go.
WORKER_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": 64 << 20, "MALLOC_MMAP_THRESHOLD_": 64 << 20}

# What a LocalCluster runs beside the tasks, for a dashboard nobody may be watching: each worker's
# statistical profiler (a stack sample every 10 ms), the event-loop tick (every 20 ms) and the
# system monitor (every 0.5 s). On a small machine they take CPU from the workers that share its
# cores, so they are turned down or off.
QUIET_CLUSTER = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
                 "distributed.admin.system-monitor.interval": "2s"}


def _unless_set(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` less those the user's dask config (YAML or ``DASK_*``) changes from the default."""
    defaults: dict[str, Any] = {}
    for d in dask.config.defaults:
        dask.config.update(defaults, d)
    return {k: v for k, v in settings.items() if dask.config.get(k, None) == dask.config.get(k, None, config=defaults)}


@contextmanager
def local_cluster(workers: int | None = None, processes: bool = True) -> Iterator[LocalCluster]:
    """A LocalCluster of ``workers`` single-threaded processes (default: one per core).

    One thread per process: the stages' tasks are CPU-bound Python and numpy, so threads would
    share one GIL. Workers get ``WORKER_MALLOC_ENV``; an exported variable of the same name wins
    (dask's rule), and so does one a plain ``LocalCluster`` left in this process's environment.
    The cluster runs with ``QUIET_CLUSTER``, less any of it the user's dask config sets.

    ``processes=False`` runs one worker with ``workers`` threads inside this process: it starts at
    once, with no worker process to spawn and import, for work that waits on I/O or releases the
    GIL (the same scheduler, futures and task graph as the process cluster).
    """
    from distributed import LocalCluster

    n = workers or os.cpu_count() or 1
    quiet = _unless_set(QUIET_CLUSTER)
    if not processes:
        with dask.config.set(quiet), LocalCluster(n_workers=1, threads_per_worker=n, processes=False,
                                                  dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster:
            yield cluster
        return
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC_ENV}
    # Task errors reach the client as exceptions and are reported there on one line; the workers'
    # own "Compute Failed" tracebacks would only bury that line.
    with dask.config.set({**quiet, "distributed.nanny.pre-spawn-environ": environ}), _sigint_ignored():
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.CRITICAL)
    with cluster:
        yield cluster


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Worker processes started meanwhile inherit SIGINT ignored (Python then installs no handler of
    its own): Ctrl-C reaches the whole process group, and the driver, not each worker, stops the
    run; every worker's KeyboardInterrupt traceback buried the driver's one line."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                processes: bool = True) -> Iterator[Client]:
    """Connect to ``scheduler`` if given, else start a ``local_cluster`` of ``workers`` processes
    (``processes=False``: of ``workers`` threads in this process)."""
    from distributed import Client

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
    with local_cluster(workers, processes) as cluster, Client(cluster) as client:
        yield client


class ThreadClient:
    """The part of a ``distributed.Client`` the filter stage uses (``submit``, ``map``, ``gather``,
    ``compute``, ``scheduler_info``) on a pool of threads in this process; ``dask.compute`` runs on
    threads too. It starts at once and imports no ``distributed``, so a small
    run, or one whose tasks release the GIL, pays for neither a scheduler nor worker processes."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="textbook-task")

    def submit(self, fn: Callable[..., T], *args: Any, pure: bool | None = None, **kwargs: Any) -> Future[T]:
        return self._pool.submit(fn, *args, **kwargs)

    def map(self, fn: Callable[..., T], *iterables: Any, pure: bool | None = None, **kwargs: Any) -> list[Future[T]]:
        return [self._pool.submit(fn, *args, **kwargs) for args in zip(*iterables, strict=True)]

    def gather(self, futures: list[Future[T]]) -> list[T]:
        return [f.result() for f in futures]

    def compute(self, collections: list[Any]) -> list[Future[Any]]:
        """One future per delayed object, each computed on a pool thread."""
        import dask.local

        return [self._pool.submit(lambda c=c: dask.compute(c, scheduler=dask.local.get_sync)[0]) for c in collections]

    def scheduler_info(self) -> dict[str, Any]:
        return {"workers": {"threads": {"nthreads": self.threads}}}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def local_threads(workers: int | None = None) -> Iterator[ThreadClient]:
    """A ``ThreadClient`` of ``workers`` threads (default: one per core); ``dask.compute`` inside
    uses as many threads."""
    import dask.threaded

    client = ThreadClient(workers or os.cpu_count() or 1)
    try:
        # the scheduler as a function: named as "threads", dask would import distributed to look for a client
        with dask.config.set(scheduler=dask.threaded.get, num_workers=client.threads):
            yield client
    finally:
        client.close()


class NoWorkersError(PipelineError):
    """No Dask worker was connected for the whole of the configured wait."""


WORKER_POLL_S = 1.0
"""How often the driver asks the scheduler how many workers it has, while it waits on tasks."""


def as_completed(futures: Any, client: Any = None, worker_wait_s: float | None = None,
                 wait_key: str = "worker_wait_s", stage: str = "textbook") -> Iterator[Any]:
    """Futures as they finish: a ``ThreadClient``'s or a ``distributed.Client``'s.

    With a ``distributed.Client`` and ``worker_wait_s``, a watcher asks the scheduler every
    ``WORKER_POLL_S`` seconds whether any worker is left. With none, the driver says so on one line
    and waits; if a worker joins within ``worker_wait_s`` the tasks go on, else they are cancelled and
    ``NoWorkersError`` (naming ``wait_key``, the config key of the wait) ends the iteration. ``stage``
    starts the line.
    """
    import concurrent.futures

    futures = list(futures)
    if all(isinstance(f, Future) for f in futures):
        yield from concurrent.futures.as_completed(futures)
        return
    from distributed import as_completed as distributed_as_completed

    if client is None or worker_wait_s is None:
        yield from distributed_as_completed(futures)
        return
    stop, expired = threading.Event(), threading.Event()

    def watch() -> None:
        since: float | None = None
        while not stop.wait(WORKER_POLL_S):
            try:
                workers = len(client.nthreads())
            except Exception:  # the client is closing: the iteration ends on its own
                return
            if workers:
                since = None
                continue
            if since is None:
                since = time.monotonic()
                print(f"{stage}: no Dask worker is connected; waiting up to {worker_wait_s:g} s for one ({wait_key})",
                      flush=True)
            elif time.monotonic() - since >= worker_wait_s:
                expired.set()
                client.cancel(futures)
                return

    watcher = threading.Thread(target=watch, name="worker-watch", daemon=True)
    watcher.start()
    try:
        for future in distributed_as_completed(futures):
            if expired.is_set():
                raise NoWorkersError(f"no Dask worker for {worker_wait_s:g} s ({wait_key}); the work done so far "
                                     "is kept: rerun when workers are back to resume")
            yield future
    finally:
        stop.set()


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
