"""``generate.mode: batch``: the planned rows through an OpenAI-compatible Batch API, at batch prices.

The same requests as the online engine (same ids, same prompts, same sampling) go up as JSONL batch
files (``POST /v1/files``, purpose ``batch``; one line per row: ``custom_id`` = row id, ``url``
``/v1/chat/completions``, ``body`` = the online request's body), each file becomes a batch
(``POST /v1/batches``), the batches are polled (``GET /v1/batches/{id}``) and their output and
error files downloaded. Completed lines are journaled and compacted into the same
``part-NNNNN.parquet`` shards, with the same columns, as online generation; failed and expired lines
are submitted again (at most ``generate.max_retries`` rounds a run).

Never a row twice: before a batch is created, ``out_dir/.batches.json`` (written atomically) records
its row ids and input file; the batch id follows the moment the server returns it. A rerun polls the
batches it finds there instead of submitting their rows again, and a record whose batch id was lost
to a kill between create and record is matched to its batch by input file (``GET /v1/batches``)
before anything is created for it.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import GenerateError
from pipeline.generate.backends import Sampling, _completion, resolve_endpoint
from pipeline.generate.config import GenerateConfig
from pipeline.generate.conversation import render_conversation
from pipeline.generate.flags import completion_flags
from pipeline.generate.journal import (
    EVENT,
    Journal,
    estimate_prompt_tokens,
    journal_dir,
    journal_path,
    turns_of,
)
from pipeline.generate.ledger import Ledger
from pipeline.generate.shard import ShardSpec, _compact
from pipeline.io import build_manifest, read_json, read_parquet, stable_hash, write_json, write_parquet
from pipeline.lineage import LineageError, file_digests
from pipeline.rundir import ID, MESSAGES, TEXT, list_shards, manifest_path, shard_path

BATCHES_FILE = ".batches.json"
"""The durable record of the batches submitted for ``out_dir``: row ids, input file, batch id, state."""
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "expired", "failed", "cancelled")


def batch_ledger(gen: GenerateConfig, **totals: Any) -> Ledger:
    """The run's ledger at batch prices (``generate.batch_discount`` of the online ones)."""
    return Ledger.at_batch_prices(gen.price_input_per_million, gen.price_output_per_million,
                                  gen.batch_discount, max_cost_usd=gen.max_cost_usd, **totals)


def request_line(row_id: str, messages: list[dict], model: str, sampling: Sampling) -> dict[str, Any]:
    """One line of a batch input file: the online request's body under the row id."""
    return {"custom_id": row_id, "method": "POST", "url": ENDPOINT, "body": {
        "model": model, "messages": list(messages), "temperature": sampling.temperature,
        "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}}


class BatchBook:
    """``out_dir/.batches.json``: every batch this output submitted, saved atomically on each change."""

    def __init__(self, out_dir: Path, lineage: str | None) -> None:
        self.path = Path(out_dir) / BATCHES_FILE
        self.lineage = lineage
        stored = read_json(self.path) if self.path.is_file() else {}
        self.stored_lineage = stored.get("lineage")
        self.batches: list[dict[str, Any]] = stored.get("batches", [])

    def live(self) -> list[dict[str, Any]]:
        """Batches whose results are not collected yet (their rows must not be submitted again)."""
        return [b for b in self.batches if not b.get("collected")]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json({"lineage": self.lineage, "batches": self.batches}, self.path)


def run_batch(gen: GenerateConfig, requests: pd.DataFrame, out_dir: Path, *, stage: str, run_dir: Path,
              seed: int = 0, sampling: Sampling | None = None, postprocess: Any = None, dry_run: bool = False,
              config: dict[str, Any] | None = None, manifest_fields: dict[str, Any] | None = None,
              completion_column: str = TEXT, lineage: dict[str, Any] | None = None,
              restart: bool = False, dialogue: Any = None, **_: Any) -> Any:
    """:func:`~pipeline.generate.runner.run_requests`'s contract, through the Batch API.

    Same output (shards, columns, manifest, resume and lineage rules); the ledger counts the rows at
    batch prices; ``generate.batch_wait: false`` returns once everything is submitted (a rerun
    collects). No Dask: the work is the provider's, the driver only uploads, polls and writes.
    """
    from pipeline.config import public_dict
    from pipeline.generate.runner import (
        LINEAGE_FILE,
        RunSummary,
        _check_requests,
        _print_estimate,
        _print_summary,
        _resume,
        _write_history,
        estimate_requests,
    )

    if gen.backend != "openai":
        raise GenerateError("generate.mode=batch needs generate.backend=openai (a server with /v1/batches)")
    start = time.perf_counter()
    sampling = sampling or Sampling.of(gen)
    _check_requests(requests, completion_column)
    out_dir = Path(out_dir)
    shards = [requests.iloc[k:k + gen.shard_size] for k in range(0, len(requests), gen.shard_size)]
    state = _resume(out_dir, shards, stage, lineage, restart, dry_run, gen)
    book = BatchBook(out_dir, stable_hash(lineage) if lineage is not None else None)
    if book.batches and book.stored_lineage != book.lineage:
        live = len(book.live())
        if not restart:
            raise LineageError(f"{out_dir}: its {_batches(len(book.batches))} submitted ({live} not collected) "
                               f"were built from other inputs; use a new run_dir, or rerun with --restart "
                               "to forget them")
        if not dry_run:
            print(f"{stage}: --restart: forgetting {_batches(len(book.batches))} of another plan ({live} not "
                  "collected, billed by the provider when they finish)", file=sys.stderr)
            book.batches = []
            book.save()
    ledger = batch_ledger(gen, requests=len(state.done) + state.extra_requests + len(state.lost),
                          prompt_tokens=state.prompt_tokens + sum(r["prompt_tokens"] for r in state.lost.values()),
                          completion_tokens=state.completion_tokens, lost_requests=len(state.lost))
    in_flight = {row_of(c) for b in book.live() for c in b["ids"]}

    if dry_run:
        pending = requests[~requests[ID].isin(state.done | in_flight)]
        estimate = {**estimate_requests(pending, sampling.max_tokens, ledger, dialogue), "mode": "batch",
                    "batch_discount": gen.batch_discount, "in_flight": len(in_flight - state.done)}
        _print_estimate(stage, len(requests), len(state.done), estimate)
        print(f"{stage} dry run: batch mode: prices are {gen.batch_discount:.0%} of online; "
              f"{estimate['in_flight']} rows already in submitted batches")
        return RunSummary(out_dir, len(requests), len(state.done), 0, ledger.as_dict(), dry_run=True,
                          elapsed_s=time.perf_counter() - start, estimate=estimate)

    _write_history(out_dir, state.lost, state.discarded)
    if lineage is not None:
        write_json({"lineage": lineage}, out_dir / LINEAGE_FILE)
    where = resolve_endpoint(gen)[0] or "api.openai.com"
    run = _BatchRun(gen, sampling, requests, shards, out_dir, book, ledger, set(state.done), seed, postprocess,
                    completion_column, where, dialogue)
    stop_reason = run.loop()
    parts = list_shards(out_dir)
    rows = sum(len(read_parquet(p, [ID])) for p in parts)
    if journal_dir(out_dir).is_dir() and not any(journal_dir(out_dir).iterdir()):
        journal_dir(out_dir).rmdir()
    summary = RunSummary(out_dir, len(requests), rows, run.new_rows, ledger.as_dict(), stop_reason,
                         elapsed_s=round(time.perf_counter() - start, 3))
    fields: dict[str, Any] = {"discarded_runs": state.discarded, "outputs": file_digests(parts, run_dir)}
    if lineage is not None:
        fields["lineage"] = lineage
    previous = read_json(manifest_path(out_dir)) if manifest_path(out_dir).exists() else {}
    if not run.new_rows and not run.submitted and not state.lost \
            and all(previous.get(k) == v for k, v in fields.items()):
        _print_summary(stage, summary)
        return summary  # nothing new: keep the manifest (and the digest downstream stages recorded)
    batch_info = {"mode": "batch", "discount": gen.batch_discount, "batches": len(book.batches),
                  "in_flight": len(book.live()), "submitted_rows": sum(len(b["ids"]) for b in book.batches)}
    manifest = build_manifest(stage, config if config is not None else {"generate": public_dict(gen)}, totals={
        "requests": len(requests), "rows": rows, "new_rows": summary.new_rows,
        "shards": len(parts), "complete": summary.complete, "elapsed_s": summary.elapsed_s},
        ledger=summary.ledger, stop_reason=stop_reason, batch=batch_info,
        **{**fields, **(manifest_fields or {})})
    write_json(manifest, manifest_path(out_dir))
    _print_summary(stage, summary)
    return summary


class _BatchRun:
    """One run's submit / poll / collect loop over the book.

    A batch line's ``custom_id`` is its row id, or ``<row id>@turn<k>`` for the ``k``-th turn of a row
    built turn by turn (``dialogue``): such a row takes one batch round per turn, each answered turn
    journaled as online mode does, so a rerun continues the conversation from its last turn.
    """

    def __init__(self, gen: GenerateConfig, sampling: Sampling, requests: pd.DataFrame,
                 shards: list[pd.DataFrame], out_dir: Path, book: BatchBook, ledger: Ledger, done: set[str],
                 seed: int, postprocess: Any, completion_column: str, where: str, dialogue: Any) -> None:
        import openai

        base_url, key = resolve_endpoint(gen)
        self.client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=gen.max_retries,
                                    timeout=gen.request_timeout_s)
        self.gen, self.sampling, self.requests, self.shards = gen, sampling, requests, shards
        self.out_dir, self.book, self.ledger, self.done = out_dir, book, ledger, done
        self.seed, self.postprocess, self.completion_column, self.where = seed, postprocess, completion_column, where
        self.dialogue = dialogue
        self.shard_of = {row_id: k for k, frame in enumerate(shards) for row_id in frame[ID]}
        self.rows = {r[ID]: r for r in requests.drop(columns=[MESSAGES]).to_dict("records")} \
            if dialogue is not None else {}
        self.turns: dict[str, list[dict[str, Any]]] = {}
        if dialogue is not None:
            for k in range(len(shards)):
                for row_id, turns in turns_of(Journal(journal_path(out_dir, k)).events()).items():
                    if row_id not in done:
                        self.turns[row_id] = turns[: dialogue.requests]
        self.failures: dict[str, int] = {}
        """Failed or expired answers of each ``custom_id`` in this run (at most ``max_retries`` + 1)."""
        self.journals: dict[int, Journal] = {}
        self.new_rows = 0
        self.submitted = 0
        self.last_error = ""

    def loop(self) -> str | None:
        import openai

        for k in range(len(self.shards)):  # rows journaled by a run killed before it compacted them
            if journal_path(self.out_dir, k).exists():
                self._compact(k)
        try:
            self._adopt_orphans()
            while True:
                finished = False  # collect first: a rerun (or batch_wait=false) picks up what has ended
                for record in self.book.live():
                    batch = self.client.batches.retrieve(record["batch_id"])
                    if batch.status != record.get("status"):
                        record["status"] = batch.status
                        self.book.save()
                    if batch.status in TERMINAL:
                        self._collect(record, batch)
                        finished = True
                in_flight = {row_of(c) for b in self.book.live() for c in b["ids"]}
                pending = self._pending(in_flight)
                stop = None
                if pending:
                    worst = max(pending, key=lambda item: self.failures.get(item[0], 0))
                    if self.failures.get(worst[0], 0) > self.gen.max_retries:
                        raise GenerateError(f"{self.where}: {worst[0]} unanswered after "
                                            f"{self.failures[worst[0]]} batch attempts (last: {self.last_error}); "
                                            "completed rows are kept, rerun to resume")
                    fits, stop = self._within_budget(pending, in_flight)
                    for k in range(0, len(fits), self.gen.batch_max_requests):
                        self._submit(fits[k:k + self.gen.batch_max_requests])
                live = self.book.live()
                if not live:
                    return stop
                if not self.gen.batch_wait:
                    return f"{_batches(len(live))} submitted and not finished (generate.batch_wait=false): " \
                           "rerun to collect them"
                if not finished:
                    time.sleep(self.gen.batch_poll_s)
        except openai.APIStatusError as e:
            raise GenerateError(f"{self.where}: batch API: HTTP {e.status_code}: "
                                f"{' '.join(str(getattr(e, 'message', '')).splitlines()[:1])}") from None
        except openai.APIConnectionError as e:
            raise GenerateError(f"{self.where}: batch API: {type(e).__name__}; submitted batches are "
                                f"recorded in {self.book.path}, rerun to resume") from None

    def _pending(self, in_flight: set[str]) -> list[tuple[str, list[dict]]]:
        """``(custom_id, messages)`` of every row (or next turn) neither written nor in a live batch."""
        pending = []
        for row_id, messages in zip(self.requests[ID], self.requests[MESSAGES], strict=True):
            if row_id in self.done or row_id in in_flight:
                continue
            if self.dialogue is not None and self.dialogue.applies(self.rows[row_id]):
                turns = self.turns.setdefault(row_id, [])
                if len(turns) == self.dialogue.requests:  # killed between its last turn and its row
                    self._finish(row_id)
                    continue
                history = [{"role": t["role"], "content": t["content"]} for t in turns]
                pending.append((f"{row_id}{TURN}{len(turns)}", self.dialogue.request(self.rows[row_id], history)))
            else:
                pending.append((row_id, messages))
        return pending

    def _within_budget(self, pending: list[tuple[str, list[dict]]],
                       in_flight: set[str]) -> tuple[list[tuple[str, list[dict]]], str | None]:
        """The pending requests whose worst-case cost (prompt + max_tokens, at batch prices) still fits
        ``generate.max_cost_usd`` after what is spent and what the submitted batches may cost."""
        if self.gen.max_cost_usd is None:
            return pending, None
        worst = self.ledger.cost_of(0, self.sampling.max_tokens)
        left = self.gen.max_cost_usd - self.ledger.cost_usd - worst * len(in_flight - self.done)
        take = 0
        for _, messages in pending:
            cost = self.ledger.cost_of(estimate_prompt_tokens(messages), self.sampling.max_tokens)
            if cost > left:
                break
            left -= cost
            take += 1
        stop = None if take == len(pending) else \
            f"generate.max_cost_usd={self.gen.max_cost_usd} reached (at batch prices, counting submitted batches)"
        return pending[:take], stop

    def _submit(self, items: list[tuple[str, list[dict]]]) -> None:
        """Upload the items' file, record it, create its batch, record the batch id."""
        key = uuid.uuid4().hex[:16]
        blob = "".join(json.dumps(request_line(c, m, self.gen.model, self.sampling), ensure_ascii=False) + "\n"
                       for c, m in items).encode("utf-8")
        file = self.client.files.create(file=(f"batch-{key}.jsonl", blob, "application/jsonl"), purpose="batch")
        record = {"key": key, "ids": [c for c, _ in items], "input_file_id": file.id, "batch_id": None,
                  "status": None, "uploaded_at": int(time.time()), "collected": False}
        self.book.batches.append(record)
        self.book.save()  # durable before the batch exists: a rerun finds it and never submits these rows again
        self._create(record)

    def _create(self, record: dict[str, Any]) -> None:
        batch = self.client.batches.create(input_file_id=record["input_file_id"], endpoint=ENDPOINT,
                                           completion_window=self.gen.batch_completion_window,
                                           metadata={"textbook_batch": record["key"]})
        record["batch_id"], record["status"] = batch.id, batch.status
        self.book.save()
        self.submitted += len(record["ids"])

    def _adopt_orphans(self) -> None:
        """Records uploaded but without a batch id (a kill between create and record): find their batch
        by input file among the server's batches, or create it now."""
        for record in self.book.live():
            if record["batch_id"] is not None:
                continue
            found = None
            for batch in self.client.batches.list(limit=100):
                if batch.input_file_id == record["input_file_id"]:
                    found = batch
                    break
                if batch.created_at < record["uploaded_at"] - 3600:
                    break  # newest first: older ones cannot be this record's
            if found is None:
                self._create(record)
            else:
                record["batch_id"], record["status"] = found.id, found.status
                self.book.save()

    def _collect(self, record: dict[str, Any], batch: Any) -> None:
        """Journal the batch's answered lines, compact them into their shards, note what failed."""
        if batch.status == "failed" and not batch.output_file_id:
            errors = getattr(getattr(batch, "errors", None), "data", None) or []
            detail = "; ".join(f"{e.code}: {e.message}" for e in errors[:3]) or "no detail"
            record["collected"], record["failed"] = True, list(record["ids"])
            self.book.save()
            raise GenerateError(f"{self.where}: batch {batch.id} failed validation ({detail})")
        latency = float((batch.completed_at or batch.expired_at or time.time()) - batch.created_at) \
            if batch.created_at else 0.0
        answered: dict[str, dict[str, Any]] = {}
        wanted = set(record["ids"])
        if batch.output_file_id:
            for line in self.client.files.content(batch.output_file_id).text.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                response = item.get("response") or {}
                if response.get("status_code") == 200 and item.get("custom_id") in wanted:
                    answered[item["custom_id"]] = response["body"]
        if batch.error_file_id:
            for line in self.client.files.content(batch.error_file_id).text.splitlines():
                if line.strip():
                    item = json.loads(line)
                    error = item.get("error") or ((item.get("response") or {}).get("body") or {}).get("error") or {}
                    self.last_error = f"{error.get('code') or error.get('type') or 'error'}: {error.get('message', '')}"
        touched: set[int] = set()
        fresh = 0
        for custom_id, body in answered.items():
            row_id = row_of(custom_id)
            if row_id in self.done:
                continue  # a rerun collecting again after a kill: the row is already written
            c = _completion(json.dumps(body).encode("utf-8"), latency, self.where)
            k = self.shard_of[row_id]
            if TURN in custom_id:
                turn = int(custom_id.rsplit(TURN, 1)[1])
                turns = self.turns.setdefault(row_id, [])
                if turn != len(turns):
                    continue  # collected before a kill: the turn is already journaled
                entry = {"turn": turn, "role": self.dialogue.role(turn), "content": self.dialogue.clean(c.text),
                         "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                         "completion_tokens": c.completion_tokens, "latency_s": c.latency_s}
                self._journal(k).turn(f"{batch.id}:{custom_id}", row_id, **entry)
                turns.append({"request": f"{batch.id}:{custom_id}", **entry})
                self.ledger.add(c.prompt_tokens, c.completion_tokens)
                if len(turns) == self.dialogue.requests:
                    self._finish(row_id)
                    fresh += 1
            else:
                self._journal(k).append({
                    "id": row_id, self.completion_column: c.text, "model": self.gen.model,
                    "temperature": self.sampling.temperature, "max_tokens": self.sampling.max_tokens,
                    "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens, "latency_s": c.latency_s,
                    "flags": completion_flags(c.text, c.finish_reason)})
                self.ledger.add(c.prompt_tokens, c.completion_tokens)
                self.done.add(row_id)
                fresh += 1
            touched.add(k)
        for k in sorted(touched):
            self._compact(k)
        self.new_rows += fresh
        record["collected"] = True
        record["failed"] = [c for c in record["ids"] if c not in answered]
        for c in record["failed"]:
            self.failures[c] = self.failures.get(c, 0) + 1
        self.book.save()
        if record["failed"] and not self.last_error:
            self.last_error = f"batch {batch.id} {batch.status}"

    def _finish(self, row_id: str) -> None:
        """Journal a conversation whose every turn is in: the row, with its turns' summed cost (as online)."""
        turns = self.turns.pop(row_id)
        messages = [{"role": t["role"], "content": t["content"]} for t in turns]
        flags = [f for t in turns for f in completion_flags(t["content"], t["finish_reason"])]
        k = self.shard_of[row_id]
        self._journal(k).append({
            "id": row_id, self.completion_column: render_conversation(messages), MESSAGES: messages,
            "requests": len(turns), "model": self.gen.model, "temperature": self.sampling.temperature,
            "max_tokens": self.sampling.max_tokens, "finish_reason": turns[-1]["finish_reason"],
            "prompt_tokens": sum(t["prompt_tokens"] for t in turns),
            "completion_tokens": sum(t["completion_tokens"] for t in turns),
            "latency_s": round(sum(t["latency_s"] for t in turns), 4), "flags": list(dict.fromkeys(flags))})
        self.done.add(row_id)
        self._compact(k)

    def _journal(self, k: int) -> Journal:
        if k not in self.journals:
            self.journals[k] = Journal(journal_path(self.out_dir, k))
        return self.journals[k]

    def _compact(self, k: int) -> None:
        """Old part + the shard's journaled rows into ``part-NNNNN.parquet`` (atomically); the journal
        goes once it holds no unfinished conversation."""
        journal = self._journal(k)
        journal.close()
        part = shard_path(self.out_dir, k)
        existing = read_parquet(part) if part.exists() else None
        events = journal.events()
        fresh = [r for r in events if EVENT not in r]
        spec = ShardSpec(k, self.shards[k], self.out_dir, self.gen, self.sampling, self.seed, self.postprocess,
                         self.completion_column)
        if fresh:
            table = _compact(spec, existing, fresh)
            if len(table):
                write_parquet(table, part)
        if not any(row_id not in self.done for row_id in turns_of(events)):
            journal.remove()


TURN = "@turn"
"""Joins a row id and a turn index in a batch line's ``custom_id``."""


def row_of(custom_id: str) -> str:
    """The row id of a batch line's ``custom_id``."""
    return custom_id.split(TURN, 1)[0]


def _batches(n: int) -> str:
    return f"{n} batch" if n == 1 else f"{n} batches"
