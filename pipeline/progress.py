"""Progress for long work: a tqdm bar on a terminal, one plain line per interval when output is a file.

tqdm redraws its bar with carriage returns at every update; written to a log file that is thousands
of frames for a short run. :func:`progress` keeps the bar where a person watches a terminal and
prints ``desc: n/total (pct) rate postfix`` at most every ``interval_s`` seconds (and once at the
end) otherwise. Both offer the part of tqdm's API the stages use: ``update``, ``set_postfix``,
``close``, ``n`` and use as a context manager.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any


def interactive(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal a person watches."""
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def stage_line(what: str, done: int, total: int, elapsed_s: float, unit: str = "stage",
               alike: bool = True) -> str:
    """``=== what (stage k of N) ===`` for the k-th of N steps of a long command (the demo's stages,
    compare's runs). Steps that are ``alike`` (compare's runs) get the time the rest would take at
    the pace so far; others (the demo's stages, one of which takes most of the time) the time so far."""
    if not done:
        return f"=== {what} ({unit} {done + 1} of {total}) ==="
    clock = f"~{duration(elapsed_s / done * (total - done))} left" if alike else f"{duration(elapsed_s)} so far"
    return f"=== {what} ({unit} {done + 1} of {total}, {clock}) ==="


def duration(seconds: float) -> str:
    """Seconds as a person reads them: ``42 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def note(message: str) -> None:
    """A one-line notice on stderr (not a Python warning with its source line)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def progress(total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
             disable: bool = False, file: IO[str] | None = None, interval_s: float | None = None) -> Any:
    """A tqdm bar on a terminal, else a :class:`PlainProgress` (``TEXTBOOK_PROGRESS_S`` sets its interval)."""
    file = file or sys.stderr
    if interactive(file):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, file=file,
                    dynamic_ncols=True)
    if interval_s is None:
        interval_s = float(os.environ.get("TEXTBOOK_PROGRESS_S", "30"))
    return PlainProgress(total, desc, unit, initial, disable, file, interval_s)


class PlainProgress:
    """Periodic one-line progress reports for logs (no carriage returns, no redraws)."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int, disable: bool, file: IO[str],
                 interval_s: float) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.disable, self.file, self.interval_s = disable, file, interval_s
        self._start_n, self._start = initial, time.monotonic()
        self._last = self._start
        self._postfix = ""
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._print(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._start_n:
                self._print(time.monotonic())

    def line(self, now: float) -> str:
        done = f"{self.n:,}" + (f"/{self.total:,}" if self.total else "")
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        elapsed = max(now - self._start, 1e-9)
        rate = f" {(self.n - self._start_n) / elapsed:,.1f} {self.unit}/s"
        tail = f" {self._postfix}" if self._postfix else ""
        return f"{self.desc}: {done} {self.unit}{pct}{rate}, {elapsed:.0f} s{tail}"

    def _print(self, now: float) -> None:
        if not self.disable:
            print(self.line(now), file=self.file, flush=True)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
