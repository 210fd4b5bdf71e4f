"""A per-shard append-only journal: each request is on disk before it is sent, each completion the
moment it arrives.

A shard's rows reach ``part-NNNNN.parquet`` only when the shard ends; until then the journal
``.journal/part-NNNNN.jsonl`` holds one JSON line per event (flushed to the OS, so a SIGKILL loses
nothing): a ``sent`` record written *before* a request leaves (its nonce, row id and estimated
prompt tokens), the completed row after it answers, and a ``failed`` record when the backend gave up
on it (an error answer is not billed). A row built turn by turn (a conversation) also has a ``turn``
record per answered request (its nonce, turn index, role, text and tokens): a rerun continues the
conversation from its last journaled turn, so no paid turn is asked again, and the journal of a shard
is kept while it holds an unfinished conversation. A rerun reads the journal, asks only for the missing rows,
then compacts journal and old part into the new part and deletes the journal. A request that was
sent but neither completed nor failed was in flight when the run died: the server may have answered
and billed it, so the ledger counts it as paid (see :func:`unanswered`). A line torn by a kill is
dropped on reopen.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import IO, Any

EVENT = "event"
"""Key of the bookkeeping records (``sent`` / ``failed`` / ``turn``); completed rows have no such key."""


class Journal:
    """One shard's events as JSON lines; ``append`` is durable against process death."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None

    def events(self) -> list[dict[str, Any]]:
        """Every intact line: completed rows and ``sent`` / ``failed`` records, in the order written."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # torn by a kill mid-write: the record was not complete on disk
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records

    def read(self) -> list[dict[str, Any]]:
        """The completed rows."""
        return [r for r in self.events() if EVENT not in r]

    def append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self._open()
        assert self._file is not None
        self._file.write(json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n")
        self._file.flush()

    def sent(self, nonce: str, row_id: str, prompt_tokens: int) -> None:
        """Record a request about to be sent (before it leaves: a kill after this line may have paid for it)."""
        self.append({EVENT: "sent", "request": nonce, "id": row_id, "prompt_tokens": int(prompt_tokens)})

    def turn(self, nonce: str, row_id: str, turn: int, **fields: Any) -> None:
        """Record an answered turn of a row built turn by turn (its text and tokens in ``fields``)."""
        self.append({EVENT: "turn", "request": nonce, "id": row_id, "turn": int(turn), **fields})

    def failed(self, nonce: str, row_id: str) -> None:
        """Record a request the backend gave up on: it got an error answer, not a billed completion."""
        self.append({EVENT: "failed", "request": nonce, "id": row_id})

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


def unanswered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``sent`` records of requests that neither completed nor failed: in flight when a run died.

    A row is sent again only when it has no completion, so of a completed row's ``sent`` records the
    last one is the request that answered; every earlier one was lost with its run. A row built turn by
    turn names the request behind each of its turns, so only its requests without a turn were lost.
    """
    sent: dict[str, list[dict[str, Any]]] = defaultdict(list)
    failed: set[str] = set()
    completed: set[str] = set()
    answered: set[str] = set()
    by_turns: set[str] = set()
    for r in events:
        if r.get(EVENT) == "sent":
            sent[r["id"]].append(r)
        elif r.get(EVENT) == "failed":
            failed.add(r["request"])
        elif r.get(EVENT) == "turn":
            answered.add(r["request"])
            by_turns.add(r["id"])
        else:
            completed.add(r["id"])
    lost = []
    for row_id, records in sent.items():
        open_ = [r for r in records if r["request"] not in failed and r["request"] not in answered]
        if row_id in completed and open_ and row_id not in by_turns:
            open_ = open_[:-1]
        lost.extend(open_)
    return lost


def turns_of(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The journaled ``turn`` records of each row, in turn order (the first record of each turn)."""
    turns: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in events:
        if r.get(EVENT) == "turn":
            turns[r["id"]].setdefault(r["turn"], r)
    return {row_id: [by_index[k] for k in sorted(by_index)] for row_id, by_index in turns.items()}


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """About 4 characters a token, plus a few for each message's role markers (no tokenizer needed)."""
    return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return str(value)
