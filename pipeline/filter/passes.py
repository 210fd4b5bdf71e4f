"""Passes: sets of independent Dask tasks whose outputs are files, each recorded when it is done.

A pass's tasks write their files into the pass's folder (``RUN_DIR/filtered/dedup/<pass>/``) and
return a small summary each (the files they wrote with rows, bytes and digest; counts; seconds),
which the driver keeps: per-task metadata, never per-document data. When every task is done the
pass's record (``<pass>/manifest.json``) is written: its key and the summaries. A pass's key is the
digest of what it is made from: the key of the pass before it, that pass's output digests and the
pass's own parameters (the first pass's: the lineage of its inputs). So a rerun skips every pass
whose record matches and whose files are still there, and resumes at the first that does not; a
killed worker costs only its tasks (each task is rerun whole and writes atomically).

For tests, ``TEXTBOOK_FAULT`` injects the two failures a run must survive: ``pause-after:<pass>``
stops the driver right after that pass's record is written (so a test can kill it at a known
boundary), ``kill-worker:<pass>`` makes a ``dask worker`` process that has it in its environment
kill itself (SIGKILL) when it starts a task of that pass.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
from dask.delayed import Delayed

from pipeline.cluster import ThreadClient, as_completed
from pipeline.io import read_json, stable_hash, write_json
from pipeline.rundir import manifest_path

FAULT = "TEXTBOOK_FAULT"


class Passes:
    """The passes of one run under ``folder``, each keyed on the ones before it (``key``: what the
    first is made from). ``client``: a ``distributed.Client``, a ``ThreadClient`` or None (the
    current dask scheduler); ``worker_wait_s``: how long to wait for a worker when none is left."""

    def __init__(self, folder: Path, key: Any, client: Any = None, worker_wait_s: float | None = None,
                 wait_key: str = "filter.worker_wait_s", bar: Any = None) -> None:
        self.folder = Path(folder)
        self.client, self.worker_wait_s, self.wait_key, self.bar = client, worker_wait_s, wait_key, bar
        self._key = stable_hash(key)
        self.done: list[str] = []  # passes found recorded
        self.ran: list[str] = []
        self.seconds: dict[str, float] = {}  # wall seconds of each pass run now
        self.bytes: dict[str, int] = {}  # bytes of each pass's files

    def folder_of(self, name: str) -> Path:
        return self.folder / name

    def depend(self, what: Any) -> None:
        """Make every later pass depend on ``what`` too (a threshold, a table's digest)."""
        self._key = stable_hash([self._key, what])

    def run(self, name: str, fn: Callable[..., dict[str, Any]], tasks: Sequence[tuple[Any, ...]],
            params: Any = None) -> list[dict[str, Any]]:
        """The summaries of ``fn(*args)`` for each ``args`` of ``tasks``, computed now, or read from the
        pass's record when it matches. ``fn`` writes into ``folder_of(name)`` (emptied first) and
        returns a dict; its ``files`` (``shuffle.write_table``'s summaries) are the pass's outputs.
        Arguments may be ``dask.delayed`` objects (shared by the tasks, computed once per worker)."""
        key = stable_hash([self._key, name, params])
        folder, record = self.folder_of(name), manifest_path(self.folder_of(name))
        summaries = _recorded(record, key)
        if summaries is None:
            if self.done and not self.ran:
                print(f"filter: dedup resumes at pass {name} ({len(self.done)} passes done before: "
                      f"{', '.join(self.done)})", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            start = time.perf_counter()
            summaries = self._compute(name, fn, tasks)
            self.seconds[name] = round(time.perf_counter() - start, 3)
            write_json({"pass": name, "key": key, "params": params, "tasks": summaries}, record)
            self.ran.append(name)
            _pause_after(name)
        elif not self.ran:
            self.done.append(name)
        outputs = [f["digest"] for s in summaries for f in s.get("files", [])]
        self.bytes[name] = sum(f["bytes"] for s in summaries for f in s.get("files", []))
        self._key = stable_hash([key, outputs])
        return summaries

    def _compute(self, name: str, fn: Callable[..., dict[str, Any]],
                 tasks: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
        if isinstance(self.client, ThreadClient):  # threads: no graph to build per task
            shared: dict[int, Any] = {}
            futures = [self.client.submit(_task, name, fn, *(_computed(a, shared) for a in args)) for args in tasks]
        else:
            graph = [dask.delayed(_task, pure=False)(name, fn, *args) for args in tasks]
            if self.client is None:
                return list(dask.compute(*graph))
            futures = self.client.compute(graph)
        index = {f: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        for future in as_completed(futures, self.client, self.worker_wait_s, self.wait_key, "filter"):
            results[index[future]] = future.result()
            if self.bar is not None:
                self.bar.update(1)
        return results


def _computed(arg: Any, shared: dict[int, Any]) -> Any:
    """``arg``, or the value of a ``dask.delayed`` one (computed once for all the tasks that share it)."""
    if not isinstance(arg, Delayed):
        return arg
    if id(arg) not in shared:
        shared[id(arg)] = dask.compute(arg, scheduler="sync")[0]
    return shared[id(arg)]


def _recorded(record: Path, key: str) -> list[dict[str, Any]] | None:
    """The task summaries of a pass's record when it has ``key`` and its files are all there, whole."""
    if not record.is_file():
        return None
    try:
        made = read_json(record)
    except (OSError, ValueError):
        return None
    if made.get("key") != key:
        return None
    for summary in made["tasks"]:
        for f in summary.get("files", []):
            path = record.parent / f["file"]
            if not path.is_file() or path.stat().st_size != f["bytes"]:
                return None
    return made["tasks"]


def _task(name: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    if os.environ.get(FAULT) == f"kill-worker:{name}" and _in_dask_worker():
        os.kill(os.getpid(), signal.SIGKILL)
    return fn(*args)


def _in_dask_worker() -> bool:
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def _pause_after(name: str) -> None:
    if os.environ.get(FAULT) == f"pause-after:{name}":
        print(f"filter: paused after pass {name} ({FAULT})", flush=True)
        while True:
            time.sleep(3600)
