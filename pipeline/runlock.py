"""One writer per run directory: an OS lock (``flock``) on ``RUN_DIR/.lock`` while a stage runs.

Two runs on one run directory pay for the same requests twice and interleave their files, so every
stage that writes state takes the run directory exclusively; a second run stops at once with one
line naming the live process (pid, host, command). The kernel releases an ``flock`` when its holder
dies, ``kill -9`` included, so a lock left by a dead process is simply taken by the next run; the
holder's pid, host and command are written into the file only to name it in that message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.rundir import RunDir


class RunLockError(PipelineError):
    """The run directory cannot be held: another live process holds it, or it cannot be written."""


def holder(run_dir: Path) -> dict[str, object] | None:
    """Who holds ``run_dir`` now ({pid, host, command, since}), or None when nobody does."""
    path = RunDir(run_dir).lock
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_record(fd) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextmanager
def run_lock(run_dir: Path, command: str, create: bool = True) -> Iterator[None]:
    """Hold ``run_dir`` exclusively for ``command`` (as the message to a second run names it).

    ``create`` False: a run directory that does not exist is not made (the stage says so itself).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() and not create:
        yield
        return
    fd = _open(RunDir(run_dir).lock, run_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockError(_in_use(run_dir, _read_record(fd))) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the record names a live holder only
    finally:
        os.close(fd)  # releases the lock


def _open(path: Path, run_dir: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies, as to every file
    except PermissionError:
        raise RunLockError(f"run_dir {run_dir}: not writable (permission denied); choose a run_dir you "
                             "can write to") from None
    except OSError as e:
        raise RunLockError(f"run_dir {run_dir}: cannot create it or its lock file ({e.strerror})") from None


def _read_record(fd: int) -> dict[str, object] | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _in_use(run_dir: Path, record: dict[str, object] | None) -> str:
    who = (f"pid {record.get('pid')} on {record.get('host')} ({record.get('command')}, since {record.get('since')})"
           if record else "another process")
    return f"run_dir {run_dir}: in use by {who}; wait for it to finish, or stop it"
