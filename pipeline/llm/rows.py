"""A completed row, built in one place: the journal record of an answered request or a finished
conversation, and a shard's part assembled from its journal.

Every completed row has the request's ``id``, the completion (in the run's completion column) and
:data:`COMPLETION_COLUMNS`; a conversation adds ``messages`` and ``requests`` (its turns). The part
joins them to the request's passthrough columns, runs the caller's postprocess and keeps request order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.io import read_parquet, write_parquet
from pipeline.llm.backends import Completion, Sampling
from pipeline.llm.flags import completion_flags
from pipeline.llm.journal import EVENT, Journal, turns_of
from pipeline.rundir import ID, MESSAGES, shard_path

COMPLETION_COLUMNS = ["model", "temperature", "max_tokens", "finish_reason", "prompt_tokens",
                      "completion_tokens", "latency_s", "flags"]
"""What the engine adds to every row besides the completion itself."""

Postprocess = Callable[[dict], dict]
"""Extra columns of a completed row, from the row (or only the columns named by its ``reads`` attribute)."""


@dataclass(frozen=True)
class RowBuilder:
    """The journal records of one run's completed rows: the completion column, the model and sampling
    every row records, and how a conversation's messages become its text."""

    column: str
    model: str
    sampling: Sampling
    render: Callable[[list[dict[str, str]]], str] | None = None
    """A conversation's text from its messages (the run's dialogue's ``render``)."""

    def completed(self, row_id: str, c: Completion) -> dict[str, Any]:
        """The row of one answered request."""
        return {"id": row_id, self.column: c.text, "model": self.model, "temperature": self.sampling.temperature,
                "max_tokens": self.sampling.max_tokens, "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                "latency_s": c.latency_s, "flags": completion_flags(c.text, c.finish_reason)}

    def conversation(self, row_id: str, turns: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The row of a conversation whose every turn is in: its messages and text, the turns' summed cost."""
        assert self.render is not None
        messages = [{"role": t["role"], "content": t["content"]} for t in turns]
        flags = [f for t in turns for f in completion_flags(t["content"], t["finish_reason"])]
        return {"id": row_id, self.column: self.render(messages), MESSAGES: messages, "requests": len(turns),
                "model": self.model, "temperature": self.sampling.temperature,
                "max_tokens": self.sampling.max_tokens, "finish_reason": turns[-1]["finish_reason"],
                "prompt_tokens": sum(t["prompt_tokens"] for t in turns),
                "completion_tokens": sum(t["completion_tokens"] for t in turns),
                "latency_s": round(sum(t["latency_s"] for t in turns), 4), "flags": list(dict.fromkeys(flags))}


def turn_entry(k: int, role: str, content: str, c: Completion) -> dict[str, Any]:
    """What the journal keeps of a conversation's ``k``-th answered turn (``content`` already cleaned)."""
    return {"turn": k, "role": role, "content": content, "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "latency_s": c.latency_s}


def history(turns: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """A conversation so far as messages."""
    return [{"role": t["role"], "content": t["content"]} for t in turns]


def read_part(out_dir: Path, index: int) -> pd.DataFrame | None:
    """Shard ``index``'s part as written so far (None: not yet)."""
    part = shard_path(out_dir, index)
    return read_parquet(part) if part.exists() else None


def write_part(out_dir: Path, index: int, requests: pd.DataFrame, existing: pd.DataFrame | None,
               journal: Journal, finished: set[str], postprocess: Postprocess | None) -> int:
    """Fold shard ``index``'s journaled rows into its ``existing`` part, written atomically; the journal
    goes once it holds no unfinished conversation (a row not in ``finished``). Returns the rows it added."""
    journal.close()
    part = shard_path(out_dir, index)
    events = journal.events()
    fresh = [r for r in events if EVENT not in r]
    if fresh:
        table = assemble(requests, existing, fresh, postprocess)
        if len(table):
            write_parquet(table, part)
    finished = finished | {r["id"] for r in fresh}
    if not any(row_id not in finished for row_id in turns_of(events)):
        journal.remove()  # else an unfinished conversation's paid turns stay for the rerun to continue
    return len(fresh)


def assemble(requests: pd.DataFrame, existing: pd.DataFrame | None, fresh: list[dict],
             postprocess: Postprocess | None) -> pd.DataFrame:
    """Old part + journaled rows (postprocessed, joined to their passthrough columns), in request order."""
    passthrough = requests.drop(columns=[MESSAGES]).set_index(ID)
    records = {}
    seen = set(existing[ID]) if existing is not None else set()
    for rec in fresh:
        if rec["id"] not in seen and rec["id"] in passthrough.index:
            seen.add(rec["id"])
            records[rec["id"]] = rec
    # one join for the whole shard: a per-row ``.loc`` lookup costs more than the row's request
    new_rows = pd.concat([passthrough.loc[list(records)].reset_index(),
                          pd.DataFrame(list(records.values())).drop(columns=ID, errors="ignore")],
                         axis=1) if records else pd.DataFrame()
    if postprocess is not None and len(new_rows):
        # only the columns it returns are set, so the others keep their dtypes (and nothing pays for
        # rebuilding the whole frame from dicts: that cost more than the postprocess itself)
        reads = getattr(postprocess, "reads", None)  # the columns it needs, if it says
        rows = new_rows[[c for c in reads if c in new_rows.columns]] if reads is not None else new_rows
        results = [postprocess(row) for row in rows.to_dict("records")]
        for column in dict.fromkeys(k for r in results for k in r):
            before = new_rows[column].tolist() if column in new_rows.columns else [None] * len(results)
            new_rows[column] = [r.get(column, old) for r, old in zip(results, before, strict=True)]
    frames = [f for f in (existing, new_rows) if f is not None and len(f)]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    order = {row_id: i for i, row_id in enumerate(requests[ID])}
    return table.sort_values(ID, key=lambda s: s.map(order)).reset_index(drop=True)
