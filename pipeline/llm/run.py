"""The run skeleton: a table of chat requests in, Parquet shards of completions out, for any stage.

    check the requests -> cut shards -> resume (lineage, --restart, lost requests) -> the ledger
      -> dry run: the estimate | waves of an executor (online or batch) -> the manifest -> the summary

What a run is given is a :class:`~pipeline.llm.spec.RunSpec`; how its requests reach the model is the
executor's (:mod:`pipeline.llm.online`: Dask and a request pool; :mod:`pipeline.llm.batch`: a
provider's Batch API), and everything else is here, once, for both.

Contract (``generate`` and ``annotate`` rely on it):

- ``requests``: one row per request; ``id`` (unique str, the row key), ``messages`` (a list of
  ``{"role", "content"}`` dicts) and any passthrough columns, copied to the output unchanged (a
  passthrough named like an output column is an error, never overwritten).
- Output: ``out_dir/part-NNNNN.parquet`` (zstd, written atomically; request ``k*shard_size`` onwards
  in shard ``k``) with ``id``, the passthrough columns, the completion (in ``completion_column``) and
  :data:`~pipeline.llm.rows.COMPLETION_COLUMNS`, plus what the postprocess returns for each completed
  row (``messages`` is not kept; a postprocess with a ``reads`` attribute, a tuple of column names,
  is handed only those columns); and ``out_dir/manifest.json`` (public config, versions, git sha,
  totals, ledger, ``discarded_runs``, ``outputs`` = content digests of the parts named relative to
  ``run_dir``, ``lineage``, the caller's fields).
- Resume: every request is journaled before it is sent and every completion the moment it arrives;
  a rerun with the same requests skips ids already written and never requests a completed row
  again. Requests in flight when a run died may have been billed: the ledger counts them
  (``lost_requests``) and they are sent again.
- Lineage: the spec's fingerprint is stored with the state; a rerun whose fingerprint differs, or
  whose parts hold rows it does not plan, raises ``LineageError`` unless ``restart``, which discards
  the old rows (saying how many paid rows go); their ledgers stay in ``discarded_runs``.
- ``generate.max_cost_usd`` (counting rows already on disk), the gate, or a wave's judge stops
  sending; in-flight requests finish and are written; ``RunSummary.stop_reason`` says why.
  ``dry_run`` calls no model and returns the estimate of requests, tokens and cost.
- A dialogue builds the rows it applies to one request per turn: each turn is journaled when
  answered (a rerun continues from the last one), the ledger counts every turn's request, and the
  row gets ``messages`` and ``requests``.
- A rerun that adds nothing leaves ``manifest.json`` byte for byte as it was: downstream stages
  recorded its digest as their parent.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from pipeline.errors import GenerateError
from pipeline.io import build_manifest, read_json, write_json
from pipeline.lineage import file_digests
from pipeline.llm.journal import estimate_prompt_tokens
from pipeline.llm.ledger import Ledger
from pipeline.llm.resume import OutputState, resume_state, scan_output, write_history
from pipeline.llm.rows import COMPLETION_COLUMNS
from pipeline.llm.spec import Dialogue, Executor, Job, Outcome, RunSpec, RunSummary
from pipeline.rundir import (
    ID,
    MESSAGES,
    TEMPLATE,
    journal_dir,
    journal_path,
    lineage_path,
    list_shards,
    manifest_path,
)
from pipeline.settings import public_dict


def run_requests(spec: RunSpec, requests: pd.DataFrame, *, restart: bool = False,
                 dry_run: bool = False) -> RunSummary:
    """Complete every request of ``requests`` as ``spec`` says (see the module's contract)."""
    start = time.perf_counter()
    executor = _executor(spec)
    check_requests(requests, spec.completion_column)
    out_dir, llm = Path(spec.out_dir), spec.llm
    shards = cut(requests, llm.shard_size)
    state = resume_state(out_dir, shards, spec.stage, spec.label or f"{spec.stage} output", spec.lineage,
                         restart, dry_run, llm, spec.restart_discards)
    executor.prepare(restart, dry_run)

    if dry_run:
        ledger = executor.ledger(**state.totals())
        pending = requests[~requests[ID].isin(state.done | executor.in_flight())]
        estimate = estimate_requests(pending, spec.requested.max_tokens, ledger, spec.dialogue)
        print_estimate(spec.stage, len(requests), len(state.done), estimate)
        estimate = executor.estimate(estimate, state.done)
        return RunSummary(out_dir, len(requests), len(state.done), 0, ledger.as_dict(), dry_run=True,
                          elapsed_s=time.perf_counter() - start, estimate=estimate)

    # durable before any shard compacts (and deletes) the journal that holds the evidence
    write_history(out_dir, state.lost, state.discarded)
    if spec.lineage is not None:
        write_json({"lineage": spec.lineage}, lineage_path(out_dir))
    waves = spec.waves.waves(len(requests), _resumed(out_dir, llm.shard_size, len(requests))) \
        if spec.waves is not None else [(0, len(requests))]
    new_rows, changed, lost = 0, False, bool(state.lost)
    with executor:
        for k, (first, end) in enumerate(waves):
            wave = requests.iloc[:end]
            if end < len(requests) or k:  # the wave's plan, and what the waves before it wrote
                shards = cut(wave, llm.shard_size)
                state = scan_output(out_dir, shards)
                write_history(out_dir, state.lost, state.discarded)
            outcome = executor.execute(_job(spec, wave, shards, state, executor.ledger(**state.totals())))
            new_rows += outcome.new_rows
            changed |= outcome.changed
            stop_reason = outcome.stop_reason
            if stop_reason is None and spec.waves is not None:
                stop_reason = spec.waves.judge(out_dir, requests, first, end)
            if stop_reason:
                break
    return _finish(spec, requests, state, outcome, new_rows, stop_reason, changed or lost, start)


def _executor(spec: RunSpec) -> Executor:
    """The spec's executor (``generate.mode``)."""
    if spec.llm.mode == "batch":
        from pipeline.llm.batch import BatchExecutor

        return BatchExecutor(spec)
    from pipeline.llm.online import OnlineExecutor

    return OnlineExecutor(spec)


def cut(requests: pd.DataFrame, shard_size: int) -> list[pd.DataFrame]:
    """The shards of a plan: request ``k*shard_size`` onwards in shard ``k``."""
    return [requests.iloc[k:k + shard_size] for k in range(0, len(requests), shard_size)]


def _resumed(out_dir: Path, shard_size: int, total: int) -> int:
    """Requests up to the end of the last shard on disk (a wave plan must take them in its first wave)."""
    written = [int(p.stem.split("-")[1]) for p in list_shards(out_dir)]
    return min(total, (max(written) + 1) * shard_size) if written else 0


def _job(spec: RunSpec, wave: pd.DataFrame, shards: list[pd.DataFrame], state: OutputState, ledger: Ledger) -> Job:
    """The wave's work: shards with rows to request, or a journal a killed run left to fold in."""
    todo = [k for k, frame in enumerate(shards)
            if not frame[ID].isin(state.done).all() or journal_path(spec.out_dir, k).exists()]
    return Job(spec, wave, shards, todo, state.done, ledger, _requests_to_go(wave, state, spec.dialogue))


def _finish(spec: RunSpec, requests: pd.DataFrame, state: OutputState, outcome: Outcome, new_rows: int,
            stop_reason: str | None, changed: bool, start: float) -> RunSummary:
    """The summary, and the manifest unless the run added nothing it does not already say."""
    out_dir = Path(spec.out_dir)
    parts = list_shards(out_dir)
    # the footers' row counts, not the id columns read into pandas: the run's exit waits for this.
    # Every part was read by the scan or written by this run, so an unreadable one has already failed
    rows = sum(pq.read_metadata(p).num_rows for p in parts)
    if journal_dir(out_dir).is_dir() and not any(journal_dir(out_dir).iterdir()):
        journal_dir(out_dir).rmdir()
    summary = RunSummary(out_dir, len(requests), rows, new_rows, outcome.ledger, stop_reason,
                         elapsed_s=round(time.perf_counter() - start, 3))
    previous = read_json(manifest_path(out_dir)) if manifest_path(out_dir).exists() else {}
    fields: dict[str, Any] = {"discarded_runs": state.discarded, "outputs": file_digests(parts, spec.run_dir)}
    if spec.lineage is not None:
        fields["lineage"] = spec.lineage
    summary.described = spec.describe(summary, previous) if spec.describe is not None else {}
    fields = {**fields, **spec.manifest_fields, **summary.described}
    if not changed and all(previous.get(k) == v for k, v in fields.items()):
        # nothing new: the manifest already says this, and rewriting it (a new timestamp) would change
        # the digest every downstream stage recorded as its parent
        print_summary(spec.stage, summary)
        return summary
    config = spec.config if spec.config is not None else {"generate": public_dict(spec.llm)}
    manifest = build_manifest(spec.stage, config, totals={
        "requests": len(requests), "rows": rows, "new_rows": new_rows, "shards": len(parts),
        "complete": summary.complete, "elapsed_s": summary.elapsed_s},
        ledger=summary.ledger, stop_reason=stop_reason, **outcome.manifest, **fields)
    write_json(manifest, manifest_path(out_dir))
    print_summary(spec.stage, summary)
    return summary


def check_requests(requests: pd.DataFrame, completion_column: str) -> None:
    """GenerateError naming the first problem of a request table: a missing column, a passthrough
    that an output column would overwrite, a duplicate id, messages that are not chat messages."""
    for column in (ID, MESSAGES):
        if column not in requests.columns:
            raise GenerateError(f"requests: missing column '{column}' (need id, messages)")
    clash = [c for c in (completion_column, *COMPLETION_COLUMNS) if c in requests.columns]
    if clash:
        raise GenerateError(f"requests: passthrough column {clash[0]!r} would be overwritten by the "
                            "completion's; rename it or choose another completion_column")
    dup = requests[ID][requests[ID].duplicated()]
    if len(dup):
        raise GenerateError(f"requests: duplicate id {dup.iloc[0]!r}: ids are row keys and must be unique")
    for i, msgs in enumerate(requests[MESSAGES]):
        if not len(msgs) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in msgs):
            raise GenerateError(f"requests row {i}: 'messages' must be a non-empty list of "
                                "{'role', 'content'} dicts")


def estimate_requests(pending: pd.DataFrame, max_tokens: int, ledger: Ledger,
                      dialogue: Dialogue | None = None) -> dict[str, Any]:
    """Requests still to send, their tokens (prompt ~ chars/4; completion at most max_tokens) and cost.

    A row ``dialogue`` builds turn by turn takes ``dialogue.requests`` requests, turn ``k`` sending
    its prompt plus at most ``k * max_tokens`` of history (an upper bound, like the completions').
    """
    prompts = [estimate_prompt_tokens(msgs) for msgs in pending[MESSAGES]]
    n = dialogue.requests if dialogue is not None else 1
    turned = pending[TEMPLATE].eq(dialogue.template).tolist() \
        if dialogue is not None and TEMPLATE in pending.columns else [False] * len(pending)
    requests = len(pending) + (n - 1) * sum(turned)
    prompt_tokens = int(sum(n * p + max_tokens * n * (n - 1) // 2 if t else p
                            for p, t in zip(prompts, turned, strict=True)))
    completion_tokens = max_tokens * requests
    return {"requests": requests, "prompt_tokens": prompt_tokens,
            "max_completion_tokens": completion_tokens,
            "max_cost_usd": round(ledger.cost_of(prompt_tokens, completion_tokens), 6),
            "spent_usd": round(ledger.cost_usd, 6)}


def _requests_to_go(requests: pd.DataFrame, state: OutputState, dialogue: Dialogue | None) -> int | None:
    """Requests the rows still to do will take, when conversations take one per turn (else None: one a row)."""
    pending = requests[~requests[ID].isin(state.done)]
    turned = int(pending[TEMPLATE].eq(dialogue.template).sum()) \
        if dialogue is not None and TEMPLATE in pending.columns else 0
    if not turned:
        return None
    return max(1, len(pending) + turned * (dialogue.requests - 1) - state.partial_turns)


def print_estimate(stage: str, total: int, done: int, est: dict[str, Any]) -> None:
    print(f"{stage} dry run: {total} rows, {done} already written, {est['requests']} requests to send; "
          f"~{est['prompt_tokens']:,} prompt tokens + up to {est['max_completion_tokens']:,} completion "
          f"tokens; estimated cost <= ${est['max_cost_usd']:.4f} (spent so far ${est['spent_usd']:.4f})")


def print_summary(stage: str, s: RunSummary) -> None:
    led = s.ledger
    status = "complete" if s.complete else f"stopped: {s.stop_reason}" if s.stop_reason else "incomplete"
    lost = led.get("lost_requests", 0)
    lost_note = f" (incl. {lost} lost in flight to a killed run)" if lost else ""
    print(f"{stage}: {s.rows}/{s.total} rows in {s.out_dir} ({status}); {s.new_rows} new this run; "
          f"{led['requests']:,} requests{lost_note}, {led['prompt_tokens']:,} prompt + "
          f"{led['completion_tokens']:,} completion tokens, ${led['cost_usd']:.4f}; {s.elapsed_s:.1f}s")
