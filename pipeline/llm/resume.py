"""What an output folder already holds, read before a run sends anything: the rows completed (parts
and journals) with their tokens, the requests paid for but lost to a kill, the ledgers of discarded
runs; and the lineage check that refuses, or with ``--restart`` discards, rows built from other inputs.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from pipeline.io import read_json, read_parquet, stable_hash, write_json
from pipeline.lineage import LineageError, check_resume, describe_change, read_fingerprint
from pipeline.llm.config import LLMConfig
from pipeline.llm.journal import EVENT, Journal, turns_of, unanswered
from pipeline.llm.ledger import Ledger
from pipeline.rundir import (
    ID,
    journal_dir,
    ledger_path,
    lineage_path,
    list_shards,
    manifest_path,
)


@dataclass
class OutputState:
    """What an output folder holds: completed ids and their tokens, lost requests, discarded runs' ledgers."""

    done: set[str] = field(default_factory=set)
    extra_requests: int = 0  # beyond one per done row: the other turns of conversations, unfinished ones' turns
    partial_turns: int = 0  # the turns of unfinished conversations (in extra_requests too)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lost: dict[str, dict[str, Any]] = field(default_factory=dict)  # nonce -> its ``sent`` record
    discarded: list[dict[str, Any]] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        """The ledger's totals for what is on disk and what was lost (lost prompts estimated)."""
        return {"requests": len(self.done) + self.extra_requests + len(self.lost),
                "prompt_tokens": self.prompt_tokens + sum(r["prompt_tokens"] for r in self.lost.values()),
                "completion_tokens": self.completion_tokens, "lost_requests": len(self.lost)}


class _Unplanned(Exception):
    def __init__(self, part: Path) -> None:
        super().__init__(str(part))
        self.part = part


def resume_state(out_dir: Path, shards: list[pd.DataFrame], stage: str, what: str,
                 lineage: dict[str, Any] | None, restart: bool, dry_run: bool, llm: LLMConfig,
                 restart_discards: str = "stale") -> OutputState:
    """The state to resume from; stale state is refused, or with ``restart`` discarded (not in a dry run),
    and with ``restart_discards="all"`` so is state built from the same inputs.

    ``stage`` and ``what`` (the output) name it in messages."""
    stored = read_fingerprint(lineage_path(out_dir)) or read_fingerprint(manifest_path(out_dir))
    has_rows = bool(list_shards(out_dir)) or any(journal_dir(out_dir).glob("*.jsonl"))
    change = None
    if has_rows and lineage is not None and not check_resume(what, stored, lineage, restart, out_dir):
        change = describe_change(stored or {}, lineage)
    elif has_rows and restart and restart_discards == "all":
        change = "--restart asks every request again"
    if change is None:
        try:
            return scan_output(out_dir, shards)
        except _Unplanned as e:
            total = sum(len(s) for s in shards)
            # with a matching fingerprint only a smaller run leaves rows it does not plan
            change = f"{e.part.name} holds rows beyond the {total} requested (was the run larger?)" \
                if lineage is not None and stored is not None else \
                f"{e.part.name} holds rows this config does not plan: templates, seed, model, sampling " \
                "or shard_size changed"
            if not restart:
                raise LineageError(f"{out_dir}: {what} was built from other inputs ({change}); use a new "
                                   "run_dir, or rerun with --restart to discard it") from None
    return _discard(out_dir, stage, change, stored, dry_run, llm)


def _discard(out_dir: Path, stage: str, change: str, stored: dict[str, Any] | None, dry_run: bool,
             llm: LLMConfig) -> OutputState:
    """``--restart``: the old rows go, their cost stays on record (in a dry run only said)."""
    state = scan_output(out_dir, None)
    paid = _paid(state, llm)
    if dry_run:
        print(f"{stage} dry run: --restart would discard {len(state.done)} paid rows of {out_dir} "
              f"({paid['requests']} requests, ${paid['cost_usd']:.4f}): {change}")
        return OutputState(discarded=state.discarded)
    print(f"{stage}: --restart: discarding {len(state.done)} paid rows of {out_dir} ({paid['requests']} "
          f"requests, ${paid['cost_usd']:.4f}; kept in the manifest's discarded_runs): {change}",
          file=sys.stderr)
    record = {"discarded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reason": change,
              "lineage": stable_hash(stored) if stored else None, "rows": len(state.done), **paid}
    discarded = list(state.discarded)
    if discarded and discarded[-1].get("lineage") == record["lineage"] \
            and discarded[-1].get("reason") == change:
        discarded[-1] = record  # a discard killed half-way and repeated: the same run, once
    else:
        discarded.append(record)
    # the record first: a kill during the deletions must not lose what the old run cost
    write_history(out_dir, {}, discarded)
    for part in list_shards(out_dir):
        part.unlink()
    shutil.rmtree(journal_dir(out_dir), ignore_errors=True)
    manifest_path(out_dir).unlink(missing_ok=True)
    lineage_path(out_dir).unlink(missing_ok=True)
    return OutputState(discarded=discarded)


def _paid(state: OutputState, llm: LLMConfig) -> dict[str, Any]:
    """Requests, tokens and cost (at today's prices) of the rows and lost requests in ``state``."""
    ledger = Ledger(llm.price_input_per_million, llm.price_output_per_million, **state.totals())
    return {k: v for k, v in ledger.as_dict().items() if k != "max_cost_usd"}


def scan_output(out_dir: Path, shards: list[pd.DataFrame] | None) -> OutputState:
    """Ids already completed (parts + journals), their tokens, and the requests paid for but lost.

    With ``shards`` (the plan), a part holding rows the plan does not put there raises ``_Unplanned``;
    without, everything on disk is tallied (what a restart discards).
    """
    state = OutputState()
    for part in list_shards(out_dir):
        k = int(part.stem.split("-")[1])
        turned = "requests" in pq.read_schema(part).names  # rows built turn by turn: requests per row
        table = read_parquet(part, [ID, "prompt_tokens", "completion_tokens", *(["requests"] if turned else [])])
        if shards is not None:
            planned = set(shards[k][ID]) if k < len(shards) else set()
            if not set(table[ID]) <= planned:
                raise _Unplanned(part)
        state.done |= set(table[ID])
        state.prompt_tokens += int(table["prompt_tokens"].sum())
        state.completion_tokens += int(table["completion_tokens"].sum())
        if turned:
            state.extra_requests += int((table["requests"].fillna(1) - 1).sum())
    history = read_history(out_dir)
    state.discarded = history.get("discarded_runs", [])
    state.lost = {r["request"]: r for r in history.get("lost", [])}
    journals = sorted(journal_dir(out_dir).glob("part-*.jsonl")) if journal_dir(out_dir).is_dir() else []
    for path in journals:
        k = int(path.stem.split("-")[1])
        events = Journal(path).events()
        planned = None if shards is None else set(shards[k][ID]) if k < len(shards) else set()
        for rec in events:
            if EVENT in rec or rec["id"] in state.done or (planned is not None and rec["id"] not in planned):
                continue
            state.done.add(rec["id"])
            state.prompt_tokens += rec["prompt_tokens"]
            state.completion_tokens += rec["completion_tokens"]
            state.extra_requests += int(rec.get("requests", 1)) - 1
        for row_id, turns in turns_of(events).items():  # paid turns of conversations not yet finished
            if row_id not in state.done and (planned is None or row_id in planned):
                state.extra_requests += len(turns)
                state.partial_turns += len(turns)
                state.prompt_tokens += sum(t["prompt_tokens"] for t in turns)
                state.completion_tokens += sum(t["completion_tokens"] for t in turns)
        for rec in unanswered(events):
            state.lost.setdefault(rec["request"], rec)
    return state


def read_history(out_dir: Path) -> dict[str, Any]:
    path = ledger_path(out_dir)
    return read_json(path) if path.is_file() else {}


def write_history(out_dir: Path, lost: dict[str, dict[str, Any]], discarded: list[dict[str, Any]]) -> None:
    """``.ledger.json``: what was paid for and is not a row on disk, durable before anything deletes its evidence."""
    if lost or discarded or ledger_path(out_dir).exists():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_json({"lost": list(lost.values()), "discarded_runs": discarded}, ledger_path(out_dir))
