"""A per-shard append-only journal: each completion is on disk the moment it arrives.

A shard's rows reach ``part-NNNNN.parquet`` only when the shard ends; until then every completed
row is one JSON line in ``.journal/part-NNNNN.jsonl`` (flushed to the OS, so a SIGKILL loses
nothing). A rerun reads the journal, asks only for the missing rows, then compacts journal and
old part into the new part and deletes the journal. A line torn by a kill is dropped on reopen.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any


def journal_path(out_dir: Path, index: int) -> Path:
    return Path(out_dir) / ".journal" / f"part-{index:05d}.jsonl"


class Journal:
    """Completed rows of one shard as JSON lines; ``append`` is durable against process death."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # torn by a kill mid-write: the row was not complete on disk
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records

    def append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self._open()
        assert self._file is not None
        self._file.write(json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n")
        self._file.flush()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):  # drop a torn tail so the next line starts clean
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open across appends

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        self.close()
        if self.path.exists():
            os.unlink(self.path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return str(value)
