"""Run LLM requests on Dask with cluster-wide limits, retries, resume and a cost ledger.

``run_requests`` is the engine (shared with the ``annotate`` stage); ``generate`` samples seeds,
renders the prompts and hands them to it.
"""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from pydantic import SecretStr

from pipeline.config import Config, public_dict
from pipeline.errors import GenerateError
from pipeline.generate.backends import Sampling, resolve_endpoint
from pipeline.generate.config import GenerateConfig
from pipeline.generate.journal import (
    EVENT,
    Journal,
    estimate_prompt_tokens,
    journal_dir,
    journal_path,
    turns_of,
    unanswered,
)
from pipeline.generate.ledger import Ledger
from pipeline.generate.limits import CompletionGate, Coordinator
from pipeline.generate.shard import COMPLETION_COLUMNS, ShardResult, ShardSpec, run_shard
from pipeline.io import build_manifest, check_writable, read_json, read_parquet, stable_hash, write_json
from pipeline.lineage import (
    LineageError,
    check_resume,
    describe_change,
    file_digests,
    read_fingerprint,
)
from pipeline.progress import progress
from pipeline.rundir import ID, MANIFEST, MESSAGES, TEMPLATE, TEXT, RunDir, list_shards, manifest_path


@dataclass
class RunSummary:
    """What a run did: rows on disk, rows added now, the ledger, and why it stopped early (if it did)."""

    out_dir: Path
    total: int
    rows: int
    new_rows: int
    ledger: dict[str, Any]
    stop_reason: str | None = None
    dry_run: bool = False
    elapsed_s: float = 0.0
    estimate: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.rows == self.total


def run_requests(gen: GenerateConfig, requests: pd.DataFrame, out_dir: Path, *, stage: str, run_dir: Path,
                 seed: int = 0, scheduler: str | None = None, workers: int | None = None,
                 sampling: Sampling | None = None, gate: CompletionGate | None = None,
                 postprocess: Callable[[dict], dict] | None = None, dry_run: bool = False,
                 config: dict[str, Any] | None = None, manifest_fields: dict[str, Any] | None = None,
                 completion_column: str = TEXT, lineage: dict[str, Any] | None = None,
                 restart: bool = False, dialogue: Any = None) -> RunSummary:
    """Complete every request with ``gen``'s backend; write shards and a manifest to ``out_dir``.

    The engine takes its own section (``gen``: backend, limits, prices, shard size) and the few
    shared keys it needs: ``run_dir`` (outputs are named relative to it), ``seed`` (batch sampling
    seeds), ``scheduler`` or ``workers`` (where to run), ``config`` (the public config the manifest
    records; the section alone when None). ``sampling`` is what each request asks for (the
    section's when None); ``gate`` (a :class:`~pipeline.generate.limits.CompletionGate`) may stop
    the run early, as ``generate``'s opening gate does.

    Contract (the ``annotate`` stage relies on it):
    - ``requests``: one row per request; ``id`` (unique str, the row key), ``messages`` (a list of
      ``{"role", "content"}`` dicts) and any passthrough columns, copied to the output unchanged
      (a passthrough named like an output column is an error, never overwritten).
    - Output: ``out_dir/part-NNNNN.parquet`` (zstd, written atomically; row ``k*shard_size`` onwards in
      shard ``k``) with ``id``, the passthrough columns, the completion (in ``completion_column``),
      ``model``, ``temperature``, ``max_tokens`` (of ``sampling``), ``finish_reason``, ``prompt_tokens``,
      ``completion_tokens``, ``latency_s``, ``flags`` (``truncated`` / ``empty`` / ``refusal``), plus
      what ``postprocess(row) -> dict`` returns for each completed row (it runs before the row is
      written; ``messages`` is not kept; a postprocess with a ``reads`` attribute, a tuple of column
      names, is handed only those columns of the row); and ``out_dir/manifest.json`` (public config, versions,
      git sha, totals, ledger, ``discarded_runs``, ``outputs`` = content digests of the parts named
      relative to ``run_dir``, and ``lineage`` when given; ``manifest_fields`` win over these).
    - Execution: one Dask task per shard (``scheduler``; else, for a server backend with ``workers``
      unset or 1, one in-process Dask worker, otherwise a LocalCluster of ``workers`` processes); the
      shards of a worker share its request slots, so the next shard's requests start while the last
      ones of a shard are in flight; ``generate.concurrency`` in-flight requests and
      ``generate.requests_per_minute`` / ``tokens_per_minute`` hold across the cluster (a limit that
      makes requests wait is named once on stderr); transient errors are retried, fatal ones raise
      ``GenerateError`` with a one-line cause.
    - Resume: every request is journaled before it is sent and every completion the moment it
      arrives; a rerun with the same requests skips ids already written and never requests a
      completed row again. Requests in flight when a run died (at most ``generate.concurrency``) may
      have been billed: the ledger counts them (``lost_requests``) and they are sent again.
    - Lineage: ``lineage`` (a :func:`pipeline.lineage.fingerprint`) is stored with the state; a rerun
      whose fingerprint differs, or whose parts hold rows it does not plan, raises ``LineageError``
      unless ``restart``, which discards the old rows (saying how many paid rows go) and starts over;
      the discarded runs' ledgers stay in the manifest's ``discarded_runs``.
    - ``generate.max_cost_usd`` (counting rows already on disk), or the ``gate``, stops starting new
      requests; in-flight ones finish and are written; ``RunSummary.stop_reason`` says why.
      ``dry_run`` calls no model and returns the estimate of requests, tokens and cost.
    - ``dialogue`` (a :class:`~pipeline.generate.conversation.TurnByTurn`) builds the rows it applies
      to one request per turn: each turn is journaled when answered (a rerun continues from the last
      one), the ledger counts every turn's request, and the row gets ``messages`` and ``requests``.
    - ``generate.mode: batch`` keeps this contract through the provider's Batch API, at batch prices
      (:mod:`pipeline.generate.batch`; no Dask, no ``gate``).
    """
    if gen.mode == "batch":
        from pipeline.generate.batch import run_batch

        return run_batch(gen, requests, out_dir, stage=stage, run_dir=run_dir, seed=seed, sampling=sampling,
                         postprocess=postprocess, dry_run=dry_run, config=config, manifest_fields=manifest_fields,
                         completion_column=completion_column, lineage=lineage, restart=restart,
                         dialogue=dialogue)
    start = time.perf_counter()
    sampling = sampling or Sampling.of(gen)
    _check_requests(requests, completion_column)
    out_dir = Path(out_dir)
    shards = [requests.iloc[k:k + gen.shard_size] for k in range(0, len(requests), gen.shard_size)]
    state = _resume(out_dir, shards, stage, lineage, restart, dry_run, gen)
    ledger = Ledger(gen.price_input_per_million, gen.price_output_per_million, gen.max_cost_usd,
                    requests=len(state.done) + state.extra_requests + len(state.lost),
                    prompt_tokens=state.prompt_tokens + sum(r["prompt_tokens"] for r in state.lost.values()),
                    completion_tokens=state.completion_tokens, lost_requests=len(state.lost))
    pending = requests[~requests[ID].isin(state.done)]
    todo = [k for k, frame in enumerate(shards)
            if not frame[ID].isin(state.done).all() or journal_path(out_dir, k).exists()]

    if dry_run:
        estimate = estimate_requests(pending, sampling.max_tokens, ledger, dialogue)
        _print_estimate(stage, len(requests), len(state.done), estimate)
        return RunSummary(out_dir, len(requests), len(state.done), 0, ledger.as_dict(), dry_run=True,
                          elapsed_s=time.perf_counter() - start, estimate=estimate)

    # durable before any shard compacts (and deletes) the journal that holds the evidence
    _write_history(out_dir, state.lost, state.discarded)
    if lineage is not None:
        write_json({"lineage": lineage}, out_dir / LINEAGE_FILE)
    results: list[ShardResult] = []
    snapshot: dict[str, Any] = {**ledger.as_dict(), "stop_reason": None}
    if todo:
        specs = [ShardSpec(k, shards[k], out_dir, _resolved(gen), sampling, seed, postprocess,
                           completion_column, gate, dialogue) for k in todo]
        results, snapshot = _run_on_dask(specs, gen, scheduler, workers, ledger, gate, stage,
                                         sum(len(s) for s in shards), len(state.done),
                                         _requests_to_go(requests, state, dialogue))
    parts = list_shards(out_dir)
    # the footers' row counts, not the id columns read into pandas: the run's exit waits for this.
    # Every part was read by ``_scan`` or written by this run, so an unreadable one has already failed
    rows = sum(pq.read_metadata(p).num_rows for p in parts)
    if journal_dir(out_dir).is_dir() and not any(journal_dir(out_dir).iterdir()):
        journal_dir(out_dir).rmdir()
    stop_reason = snapshot.get("stop_reason") or next((r.stop_reason for r in results if r.stop_reason), None)
    summary = RunSummary(out_dir, len(requests), rows, sum(r.new_rows for r in results),
                         {k: v for k, v in snapshot.items() if k not in _NOT_LEDGER}, stop_reason,
                         elapsed_s=round(time.perf_counter() - start, 3))
    fields: dict[str, Any] = {"discarded_runs": state.discarded,
                              "outputs": file_digests(parts, run_dir)}
    if lineage is not None:
        fields["lineage"] = lineage
    previous = read_json(manifest_path(out_dir)) if manifest_path(out_dir).exists() else {}
    if not todo and not state.lost and all(previous.get(k) == v for k, v in fields.items()):
        # nothing new: the manifest already says this, and rewriting it (a new timestamp) would change
        # the digest every downstream stage recorded as its parent
        _print_summary(stage, summary)
        return summary
    manifest = build_manifest(stage, config if config is not None else {"generate": public_dict(gen)}, totals={
        "requests": len(requests), "rows": rows, "new_rows": summary.new_rows,
        "shards": len(parts), "complete": summary.complete, "elapsed_s": summary.elapsed_s},
        ledger=summary.ledger, stop_reason=stop_reason, **{**fields, **(manifest_fields or {})})
    write_json(manifest, manifest_path(out_dir))
    _print_summary(stage, summary)
    return summary


def estimate_requests(pending: pd.DataFrame, max_tokens: int, ledger: Ledger, dialogue: Any = None) -> dict[str, Any]:
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


def _check_requests(requests: pd.DataFrame, completion_column: str) -> None:
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


_NOT_LEDGER = ("stop_reason", "limited_by")  # what the coordinator's snapshot says besides the ledger

LEDGER_FILE = ".ledger.json"
"""What was paid for but is not a row on disk: requests lost to kills, and the ledgers of discarded runs."""
LINEAGE_FILE = ".lineage.json"
"""The fingerprint the rows on disk were built from, written before the first request of a run."""


@dataclass
class _State:
    """What ``out_dir`` holds: completed ids and their tokens, lost requests, discarded runs' ledgers."""

    done: set[str] = field(default_factory=set)
    extra_requests: int = 0  # beyond one per done row: the other turns of conversations, unfinished ones' turns
    partial_turns: int = 0  # the turns of unfinished conversations (in extra_requests too)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lost: dict[str, dict[str, Any]] = field(default_factory=dict)  # nonce -> its ``sent`` record
    discarded: list[dict[str, Any]] = field(default_factory=list)


class _Unplanned(Exception):
    def __init__(self, part: Path) -> None:
        super().__init__(str(part))
        self.part = part


def _resume(out_dir: Path, shards: list[pd.DataFrame], stage: str, lineage: dict[str, Any] | None,
            restart: bool, dry_run: bool, gen: Any) -> _State:
    """The state to resume from; stale state is refused, or with ``restart`` discarded (not in a dry run)."""
    stored = read_fingerprint(out_dir / LINEAGE_FILE) or read_fingerprint(manifest_path(out_dir))
    has_rows = bool(list_shards(out_dir)) or any(journal_dir(out_dir).glob("*.jsonl"))
    what = f"{stage} output"
    change = None
    if has_rows and lineage is not None and not check_resume(what, stored, lineage, restart, out_dir):
        change = describe_change(stored or {}, lineage)
    if change is None:
        try:
            return _scan(out_dir, shards)
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
    state = _scan(out_dir, None)
    paid = _ledger_of(state, gen)
    if dry_run:
        print(f"{stage} dry run: --restart would discard {len(state.done)} paid rows of {out_dir} "
              f"({paid['requests']} requests, ${paid['cost_usd']:.4f}): {change}")
        return _State(discarded=state.discarded)
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
    _write_history(out_dir, {}, discarded)
    for part in list_shards(out_dir):
        part.unlink()
    shutil.rmtree(journal_dir(out_dir), ignore_errors=True)
    for name in (MANIFEST, LINEAGE_FILE):
        (out_dir / name).unlink(missing_ok=True)
    return _State(discarded=discarded)


def _ledger_of(state: _State, gen: Any) -> dict[str, Any]:
    """Requests, tokens and cost (at today's prices) of the rows and lost requests in ``state``."""
    ledger = Ledger(gen.price_input_per_million, gen.price_output_per_million,
                    requests=len(state.done) + state.extra_requests + len(state.lost),
                    prompt_tokens=state.prompt_tokens + sum(r["prompt_tokens"] for r in state.lost.values()),
                    completion_tokens=state.completion_tokens, lost_requests=len(state.lost))
    return {k: v for k, v in ledger.as_dict().items() if k != "max_cost_usd"}


def _scan(out_dir: Path, shards: list[pd.DataFrame] | None) -> _State:
    """Ids already completed (parts + journals), their tokens, and the requests paid for but lost.

    With ``shards`` (the plan), a part holding rows the plan does not put there raises ``_Unplanned``;
    without, everything on disk is tallied (what a restart discards).
    """
    state = _State()
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
    history = _read_history(out_dir)
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


def _read_history(out_dir: Path) -> dict[str, Any]:
    path = out_dir / LEDGER_FILE
    return read_json(path) if path.is_file() else {}


def _write_history(out_dir: Path, lost: dict[str, dict[str, Any]], discarded: list[dict[str, Any]]) -> None:
    if lost or discarded or (out_dir / LEDGER_FILE).exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json({"lost": list(lost.values()), "discarded_runs": discarded}, out_dir / LEDGER_FILE)


def _resolved(gen: GenerateConfig) -> GenerateConfig:
    """``gen`` with the endpoint and key resolved here: a remote cluster's workers lack the driver's
    environment."""
    if gen.backend != "openai":
        return gen
    base_url, key = resolve_endpoint(gen)
    return gen.model_copy(update={"base_url": base_url, "api_key": SecretStr(key)})


def _requests_to_go(requests: pd.DataFrame, state: _State, dialogue: Any) -> int | None:
    """Requests the rows still to do will take, when conversations take one per turn (else None: one a row)."""
    pending = requests[~requests[ID].isin(state.done)]
    turned = int(pending[TEMPLATE].eq(dialogue.template).sum()) \
        if dialogue is not None and TEMPLATE in pending.columns else 0
    if not turned:
        return None
    return max(1, len(pending) + turned * (dialogue.requests - 1) - state.partial_turns)


def _run_on_dask(specs: list[ShardSpec], gen: GenerateConfig, scheduler: str | None, workers: int | None,
                 ledger: Ledger, gate: CompletionGate | None, stage: str, total: int,
                 rows_done: int, requests_to_go: int | None = None) -> tuple[list[ShardResult], dict[str, Any]]:
    from distributed import Semaphore, wait

    from pipeline.cluster import dask_client

    # a server's requests wait on the network: one event loop in this process carries hundreds a second,
    # so no worker processes are started (and their imports paid) unless asked for with workers=N
    in_process = scheduler is None and (workers or 1) == 1 and gen.backend == "openai"
    with dask_client(scheduler, 1 if in_process else workers, processes=not in_process) as client:
        # keep the future: the actor lives only as long as a future refers to it
        coordinator_future = client.submit(Coordinator, ledger, gen.requests_per_minute, gen.tokens_per_minute,
                                           gate, actor=True)
        coordinator = coordinator_future.result()
        semaphore = Semaphore(max_leases=gen.concurrency, name=f"{stage}-{uuid.uuid4().hex}")
        # with several workers a pool hands its leases round at each shard boundary, so every worker
        # gets its share; alone, it keeps them
        share_leases = not in_process and len(client.scheduler_info()["workers"]) > 1
        futures = [client.submit(run_shard, spec, coordinator, semaphore, share_leases, pure=False,
                                 key=f"{stage}-shard-{spec.index}-{uuid.uuid4().hex}")
                   for spec in specs]
        first = ledger.requests
        # a bar on a terminal, one line per interval in a log (tqdm's frames would flood it)
        bar = progress(total=total, initial=rows_done, unit="row", desc=stage)
        to_go = total - rows_done

        def rows_at(requests: int) -> int:
            # a conversation takes a request per turn: rows are estimated from the requests they need
            sent = requests - first
            return rows_done + (sent if requests_to_go is None else min(to_go, sent * to_go // requests_to_go))
        began = time.perf_counter()
        said_limited = False
        try:
            while True:
                snapshot = coordinator.snapshot().result()
                if snapshot["limited_by"] and not said_limited:  # once: a slow run should say why
                    said_limited = True
                    print(f"{stage}: the rate limit {snapshot['limited_by']} is what holds this run back; raise it "
                          "(or set it to null) if your provider allows more", file=sys.stderr)
                elapsed = max(time.perf_counter() - began, 1e-9)
                tokens = snapshot["prompt_tokens"] + snapshot["completion_tokens"] - ledger.prompt_tokens \
                    - ledger.completion_tokens
                bar.set_postfix({"req/s": f"{(snapshot['requests'] - first) / elapsed:.1f}",
                                 "tok/s": f"{tokens / elapsed:.0f}", "cost": f"${snapshot['cost_usd']:.4f}"},
                                refresh=False)
                bar.update(rows_at(snapshot["requests"]) - bar.n)
                failed = next((f for f in futures if f.status == "error"), None)
                if failed is not None:
                    error = failed.exception()  # a GenerateError keeps its type and message
                    client.cancel(futures)
                    raise error
                if all(f.done() for f in futures):
                    break
                with suppress(TimeoutError):
                    # wakes the moment the last shard ends, not at the next tick of the bar
                    wait(futures, timeout=0.3)
            results = client.gather(futures)
            snapshot = coordinator.snapshot().result()
            bar.update(rows_at(snapshot["requests"]) - bar.n)
        finally:
            bar.close()
            semaphore.close()
            coordinator_future.release()
    return results, snapshot


def _print_estimate(stage: str, total: int, done: int, est: dict[str, Any]) -> None:
    print(f"{stage} dry run: {total} rows, {done} already written, {est['requests']} requests to send; "
          f"~{est['prompt_tokens']:,} prompt tokens + up to {est['max_completion_tokens']:,} completion "
          f"tokens; estimated cost <= ${est['max_cost_usd']:.4f} (spent so far ${est['spent_usd']:.4f})")


def _print_summary(stage: str, s: RunSummary) -> None:
    led = s.ledger
    status = "complete" if s.complete else f"stopped: {s.stop_reason}" if s.stop_reason else "incomplete"
    lost = led.get("lost_requests", 0)
    lost_note = f" (incl. {lost} lost in flight to a killed run)" if lost else ""
    print(f"{stage}: {s.rows}/{s.total} rows in {s.out_dir} ({status}); {s.new_rows} new this run; "
          f"{led['requests']:,} requests{lost_note}, {led['prompt_tokens']:,} prompt + "
          f"{led['completion_tokens']:,} completion tokens, ${led['cost_usd']:.4f}; {s.elapsed_s:.1f}s")


def generate(cfg: Config, dry_run: bool = False, restart: bool = False, **_: Any) -> int:
    """`textbook generate`: sample seeds, render prompts, complete them, report cost and diversity.

    Writes ``RUN_DIR/generated/part-NNNNN.parquet`` and ``manifest.json``; exit code 0 when the run is
    complete or stopped cleanly by ``generate.max_cost_usd``, 1 when the diversity gate fails. Resumes
    only rows built from the same templates, seeds, web extracts and settings (``plan_lineage``);
    ``restart`` discards rows built from others.
    """
    from pipeline.generate.conversation import conversation_turns
    from pipeline.generate.diversity import OpeningGate, diversity_report
    from pipeline.generate.plan import plan_lineage, plan_requests
    from pipeline.io import read_shards

    gen = cfg.generate
    out_dir = RunDir(cfg.run_dir).generated
    if not dry_run:  # before a request is paid for, not at the first write
        check_writable(GenerateError, out_dir)
    requests, templates = plan_requests(cfg)
    template_info = {name: {"sha": t.sha, "requires": list(t.requires), "about": t.about}
                     for name, t in templates.items()}
    # the opening gate is generate's own (other stages' answers are labels, not prose)
    gate = OpeningGate(gen.diversity_max_opening_share) if gen.diversity_gate == "fail" else None
    postprocess = None
    if gen.rephrase.input:  # rephrased rows: faithfulness to the source chunk, flagged below the minimum
        from pipeline.generate.rephrase import Faithfulness

        postprocess = Faithfulness(gen.rephrase.min_faithfulness)
    summary = run_requests(gen, requests, out_dir, stage="generate", run_dir=cfg.run_dir, seed=cfg.seed,
                           scheduler=cfg.scheduler, workers=cfg.workers, gate=gate, dry_run=dry_run,
                           postprocess=postprocess, dialogue=conversation_turns(cfg),
                           config=public_dict(cfg), manifest_fields={"templates": template_info},
                           lineage=plan_lineage(cfg, templates), restart=restart)
    if dry_run:
        print(f"first prompt ({requests['template'].iloc[0]}):\n{requests['prompt'].iloc[0]}"
              if len(requests) else "no rows planned (generate.num_samples=0"
              + (f" and no documents to rephrase in {', '.join(gen.rephrase.input)})" if gen.rephrase.input else ")"))
        return 0
    if summary.rows == 0:
        return 0
    manifest = read_json(manifest_path(out_dir))
    if summary.new_rows == 0 and "diversity" in manifest:  # same rows, same report: the manifest stays as it is
        report = {k: v for k, v in manifest["diversity"].items() if k != "gate"}
    else:
        report = diversity_report(read_shards(out_dir, [TEXT])[TEXT].tolist())
    verdict = _diversity_verdict(report, gen.diversity_max_opening_share, gen.diversity_gate)
    print(f"diversity: distinct-1/2/3 {report['distinct_1']:.3f}/{report['distinct_2']:.3f}/"
          f"{report['distinct_3']:.3f}; top opening {report['top_opening']!r} in "
          f"{report['top_opening_share']:.0%} of rows; near-duplicates {report['near_duplicate_rate']:.1%}")
    if manifest.get("diversity") != {**report, "gate": verdict}:
        manifest["diversity"] = {**report, "gate": verdict}
        write_json(manifest, manifest_path(out_dir))
    if verdict:
        print(f"{'error' if gen.diversity_gate == 'fail' else 'warning'}: {verdict}", file=sys.stderr)
        if gen.diversity_gate == "fail":
            return 1
    return 0


def _diversity_verdict(report: dict[str, Any], max_share: float, mode: str) -> str | None:
    if mode == "off" or report["texts"] < 10 or report["top_opening_share"] <= max_share:
        return None
    return (f"opening {report['top_opening']!r} starts {report['top_opening_share']:.0%} of rows, over "
            f"generate.diversity_max_opening_share={max_share:.0%}; vary the prompts or raise the limit")
