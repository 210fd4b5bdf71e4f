"""The batch executor (``generate.mode: batch``): a wave's rows through a provider's Batch API, at batch prices.

The same requests as the online engine (same ids, same prompts, same sampling) go up as JSONL batch
files (``POST /v1/files``, purpose ``batch``; one line per row: ``custom_id`` = row id, ``url``
``/v1/chat/completions``, ``body`` = the online request's body), each file becomes a batch
(``POST /v1/batches``), the batches are polled (``GET /v1/batches/{id}``) and their output and
error files downloaded. Completed lines are journaled and compacted into the same
``part-NNNNN.parquet`` shards, with the same columns, as the online executor; failed and expired lines
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

from pipeline.errors import GenerateError
from pipeline.io import read_json, stable_hash, write_json
from pipeline.lineage import LineageError
from pipeline.llm.backends import BatchAPI, BatchConnectionError, Sampling, open_backend
from pipeline.llm.config import LLMConfig
from pipeline.llm.journal import Journal, estimate_prompt_tokens, turns_of
from pipeline.llm.ledger import Ledger
from pipeline.llm.rows import Postprocess, RowBuilder, history, read_part, turn_entry, write_part
from pipeline.llm.spec import Dialogue, Job, Outcome, RunSpec
from pipeline.rundir import ID, MESSAGES, batches_path, journal_path

TERMINAL = ("completed", "expired", "failed", "cancelled")


def request_line(row_id: str, messages: list[dict], model: str, sampling: Sampling) -> dict[str, Any]:
    """One line of a batch input file: the online request's body under the row id."""
    return {"custom_id": row_id, "method": "POST", "url": BatchAPI.ENDPOINT, "body": {
        "model": model, "messages": list(messages), **sampling.body()}}


class BatchBook:
    """``out_dir/.batches.json``: every batch this output submitted, saved atomically on each change."""

    def __init__(self, out_dir: Path, lineage: str | None) -> None:
        self.path = batches_path(out_dir)
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


class BatchExecutor:
    """Completes each wave through the Batch API: no Dask, the work is the provider's; the driver
    uploads, polls and writes. ``generate.batch_wait: false`` returns once everything is submitted
    (a rerun collects)."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.api = open_backend(spec.llm, batch=True)
        self.book = BatchBook(spec.out_dir, stable_hash(spec.lineage) if spec.lineage is not None else None)

    def __enter__(self) -> BatchExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def ledger(self, **totals: Any) -> Ledger:
        """The run's ledger at batch prices (``generate.batch_discount`` of the online ones)."""
        llm = self.spec.llm
        return Ledger.at_batch_prices(llm.price_input_per_million, llm.price_output_per_million,
                                      llm.batch_discount, max_cost_usd=llm.max_cost_usd, **totals)

    def prepare(self, restart: bool, dry_run: bool) -> None:
        """Batches submitted for another plan stop the run, or with ``restart`` are forgotten."""
        book = self.book
        if not book.batches or book.stored_lineage == book.lineage:
            return
        live = len(book.live())
        if not restart:
            raise LineageError(f"{self.spec.out_dir}: its {_batches(len(book.batches))} submitted ({live} not "
                               "collected) were built from other inputs; use a new run_dir, or rerun with "
                               "--restart to forget them")
        if not dry_run:
            print(f"{self.spec.stage}: --restart: forgetting {_batches(len(book.batches))} of another plan ({live} "
                  "not collected, billed by the provider when they finish)", file=sys.stderr)
            book.batches = []
            book.save()

    def in_flight(self) -> set[str]:
        """Rows in submitted batches not yet collected: never submitted again."""
        return {row_of(c) for b in self.book.live() for c in b["ids"]}

    def estimate(self, estimate: dict[str, Any], done: set[str]) -> dict[str, Any]:
        """The dry run's estimate (at batch prices) with the rows already in submitted batches."""
        llm, stage = self.spec.llm, self.spec.stage
        in_flight = len(self.in_flight() - done)
        print(f"{stage} dry run: batch mode: prices are {llm.batch_discount:.0%} of online; "
              f"{in_flight} rows already in submitted batches")
        return {**estimate, "mode": "batch", "batch_discount": llm.batch_discount, "in_flight": in_flight}

    def execute(self, job: Job) -> Outcome:
        run = _BatchRun(job, self.api, self.book)
        stop_reason = run.loop()
        book = self.book
        batch = {"mode": "batch", "discount": self.spec.llm.batch_discount, "batches": len(book.batches),
                 "in_flight": len(book.live()), "submitted_rows": sum(len(b["ids"]) for b in book.batches)}
        return Outcome(ledger=job.ledger.as_dict(), new_rows=run.new_rows, stop_reason=stop_reason,
                       changed=bool(run.new_rows or run.submitted), manifest={"batch": batch})


class _BatchRun:
    """One run's submit / poll / collect loop over the book.

    A batch line's ``custom_id`` is its row id, or ``<row id>@turn<k>`` for the ``k``-th turn of a row
    built turn by turn (``dialogue``): such a row takes one batch round per turn, each answered turn
    journaled as online mode does, so a rerun continues the conversation from its last turn.
    """

    def __init__(self, job: Job, api: BatchAPI, book: BatchBook) -> None:
        spec = job.spec
        self.api, self.book, self.where = api, book, api.where
        self.llm: LLMConfig = spec.llm
        self.sampling = spec.requested
        self.requests, self.shards, self.out_dir = job.requests, job.shards, spec.out_dir
        self.ledger, self.done = job.ledger, set(job.done)
        self.postprocess: Postprocess | None = spec.postprocess
        self.dialogue: Dialogue | None = spec.dialogue
        self.builder = RowBuilder(spec.completion_column, self.llm.model, self.sampling,
                                  self.dialogue.render if self.dialogue is not None else None)
        self.shard_of = {row_id: k for k, frame in enumerate(self.shards) for row_id in frame[ID]}
        self.rows = {r[ID]: r for r in self.requests.drop(columns=[MESSAGES]).to_dict("records")} \
            if self.dialogue is not None else {}
        self.turns: dict[str, list[dict[str, Any]]] = {}
        if self.dialogue is not None:
            for k in range(len(self.shards)):
                for row_id, turns in turns_of(Journal(journal_path(self.out_dir, k)).events()).items():
                    if row_id not in self.done:
                        self.turns[row_id] = turns[: self.dialogue.requests]
        self.failures: dict[str, int] = {}
        """Failed or expired answers of each ``custom_id`` in this run (at most ``max_retries`` + 1)."""
        self.journals: dict[int, Journal] = {}
        self.new_rows = 0
        self.submitted = 0
        self.last_error = ""

    def loop(self) -> str | None:
        for k in range(len(self.shards)):  # rows journaled by a run killed before it compacted them
            if journal_path(self.out_dir, k).exists():
                self._compact(k)
        try:
            self._adopt_orphans()
            while True:
                finished = False  # collect first: a rerun (or batch_wait=false) picks up what has ended
                for record in self.book.live():
                    batch = self.api.retrieve(record["batch_id"])
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
                    if self.failures.get(worst[0], 0) > self.llm.max_retries:
                        raise GenerateError(f"{self.where}: {worst[0]} unanswered after "
                                            f"{self.failures[worst[0]]} batch attempts (last: {self.last_error}); "
                                            "completed rows are kept, rerun to resume")
                    fits, stop = self._within_budget(pending, in_flight)
                    for k in range(0, len(fits), self.llm.batch_max_requests):
                        self._submit(fits[k:k + self.llm.batch_max_requests])
                live = self.book.live()
                if not live:
                    return stop
                if not self.llm.batch_wait:
                    return f"{_batches(len(live))} submitted and not finished (generate.batch_wait=false): " \
                           "rerun to collect them"
                if not finished:
                    time.sleep(self.llm.batch_poll_s)
        except BatchConnectionError as e:
            raise GenerateError(f"{e}; submitted batches are recorded in {self.book.path}, rerun to resume") from None

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
                pending.append((f"{row_id}{TURN}{len(turns)}", self.dialogue.request(self.rows[row_id], history(turns))))
            else:
                pending.append((row_id, messages))
        return pending

    def _within_budget(self, pending: list[tuple[str, list[dict]]],
                       in_flight: set[str]) -> tuple[list[tuple[str, list[dict]]], str | None]:
        """The pending requests whose worst-case cost (prompt + max_tokens, at batch prices) still fits
        ``generate.max_cost_usd`` after what is spent and what the submitted batches may cost."""
        if self.llm.max_cost_usd is None:
            return pending, None
        worst = self.ledger.cost_of(0, self.sampling.max_tokens)
        left = self.llm.max_cost_usd - self.ledger.cost_usd - worst * len(in_flight - self.done)
        take = 0
        for _, messages in pending:
            cost = self.ledger.cost_of(estimate_prompt_tokens(messages), self.sampling.max_tokens)
            if cost > left:
                break
            left -= cost
            take += 1
        stop = None if take == len(pending) else \
            f"generate.max_cost_usd={self.llm.max_cost_usd} reached (at batch prices, counting submitted batches)"
        return pending[:take], stop

    def _submit(self, items: list[tuple[str, list[dict]]]) -> None:
        """Upload the items' file, record it, create its batch, record the batch id."""
        key = uuid.uuid4().hex[:16]
        blob = "".join(json.dumps(request_line(c, m, self.llm.model, self.sampling), ensure_ascii=False) + "\n"
                       for c, m in items).encode("utf-8")
        file_id = self.api.upload(f"batch-{key}.jsonl", blob)
        record = {"key": key, "ids": [c for c, _ in items], "input_file_id": file_id, "batch_id": None,
                  "status": None, "uploaded_at": int(time.time()), "collected": False}
        self.book.batches.append(record)
        self.book.save()  # durable before the batch exists: a rerun finds it and never submits these rows again
        self._create(record)

    def _create(self, record: dict[str, Any]) -> None:
        batch = self.api.create(record["input_file_id"], self.llm.batch_completion_window, record["key"])
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
            for batch in self.api.recent(100):
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
            for line in self.api.content(batch.output_file_id).splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                response = item.get("response") or {}
                if response.get("status_code") == 200 and item.get("custom_id") in wanted:
                    answered[item["custom_id"]] = response["body"]
        if batch.error_file_id:
            for line in self.api.content(batch.error_file_id).splitlines():
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
            c = self.api.completion(body, latency)
            k = self.shard_of[row_id]
            if TURN in custom_id:
                turn = int(custom_id.rsplit(TURN, 1)[1])
                turns = self.turns.setdefault(row_id, [])
                if turn != len(turns):
                    continue  # collected before a kill: the turn is already journaled
                entry = turn_entry(turn, self.dialogue.role(turn), self.dialogue.clean(c.text), c)
                self._journal(k).turn(f"{batch.id}:{custom_id}", row_id, **entry)
                turns.append({"request": f"{batch.id}:{custom_id}", **entry})
                self.ledger.add(c.prompt_tokens, c.completion_tokens)
                if len(turns) == self.dialogue.requests:
                    self._finish(row_id)
                    fresh += 1
            else:
                self._journal(k).append(self.builder.completed(row_id, c))
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
        k = self.shard_of[row_id]
        self._journal(k).append(self.builder.conversation(row_id, turns))
        self.done.add(row_id)
        self._compact(k)

    def _journal(self, k: int) -> Journal:
        if k not in self.journals:
            self.journals[k] = Journal(journal_path(self.out_dir, k))
        return self.journals[k]

    def _compact(self, k: int) -> None:
        """Old part + the shard's journaled rows into ``part-NNNNN.parquet`` (atomically); the journal
        goes once it holds no unfinished conversation."""
        write_part(self.out_dir, k, self.shards[k], read_part(self.out_dir, k), self._journal(k), self.done,
                   self.postprocess)


TURN = "@turn"
"""Joins a row id and a turn index in a batch line's ``custom_id``."""


def row_of(custom_id: str) -> str:
    """The row id of a batch line's ``custom_id``."""
    return custom_id.split(TURN, 1)[0]


def _batches(n: int) -> str:
    return f"{n} batch" if n == 1 else f"{n} batches"
