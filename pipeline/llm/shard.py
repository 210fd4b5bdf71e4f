"""One shard of an online run, executed as one Dask task: request the missing rows, journal, compact.

The task body is synchronous (what Dask runs); the requests run on the worker's long-lived event
loop through the one :class:`~pipeline.llm.backends.Backend` interface, in the worker's
:class:`RequestPool` for the run: up to the backend's ``concurrency`` slots, each sending
``batch_size`` conversations per call and holding one lease of the run's cluster-wide
``distributed.Semaphore`` while the pool has requests queued. A shard task hands its rows to the
pool and, once the pool's queue runs short (fewer requests queued than its slots take in one
round), secedes from the worker's thread pool: Dask then starts the next shard, whose rows join the
queue while this shard's last requests are in flight. So the slots stay busy across shard
boundaries (they would drain to zero at the end of every shard otherwise), and each shard still
writes its own part, atomically, once its own rows are in. A server's client keeps its
connections from one shard to the next. Blocking Dask calls (semaphore, coordinator actor) go to
a thread pool so they never stall the event loop.

Rows that ``ShardSpec.dialogue`` builds turn by turn (conversations) go through the same queue one
request per turn: each answered turn is journaled, and the row's next request goes to the front
of the queue (a started conversation finishes first), until the last turn completes the row (its
``messages``, ``text`` and summed tokens).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.cluster import run_on_worker_loop
from pipeline.errors import GenerateError
from pipeline.io import stable_hash
from pipeline.llm.backends import Backend, Completion, Sampling, open_backend
from pipeline.llm.config import LLMConfig
from pipeline.llm.journal import Journal, estimate_prompt_tokens, turns_of
from pipeline.llm.limits import CompletionGate
from pipeline.llm.rows import Postprocess, RowBuilder, history, read_part, turn_entry, write_part
from pipeline.llm.spec import Dialogue
from pipeline.rundir import ID, MESSAGES, TEXT, journal_path

# Slots open this far apart (the whole ramp at most 1 s): requests sent together come back together
# and stay bunched on the event loop from then on.
SLOT_STAGGER_S = 0.002
MAX_RAMP_S = 1.0


@dataclass
class ShardSpec:
    """What one task needs: its rows (``id``, ``messages``, passthrough columns), where they go, the
    backend's section, the sampling asked for, and the run's gate (whose ``key`` runs here)."""

    index: int
    requests: pd.DataFrame
    out_dir: Path
    cfg: LLMConfig
    sampling: Sampling
    seed: int = 0
    postprocess: Postprocess | None = None
    completion_column: str = TEXT
    gate: CompletionGate | None = None
    dialogue: Dialogue | None = None
    """Builds the rows it applies to turn by turn (one request per turn); None: one request per row."""

    @property
    def rows(self) -> RowBuilder:
        return RowBuilder(self.completion_column, self.cfg.model, self.sampling,
                          self.dialogue.render if self.dialogue is not None else None)


@dataclass
class ShardResult:
    index: int
    new_rows: int
    stop_reason: str | None = None


def run_shard(spec: ShardSpec, coordinator: Any, semaphore: Any, share_leases: bool = False) -> ShardResult:
    """Complete every row of the shard not yet on disk, then write ``part-NNNNN.parquet`` atomically.

    ``share_leases``: other workers run shards of this run too, so this worker's slots hand their
    leases round at each shard boundary rather than keeping them while it has rows queued."""
    existing = read_part(spec.out_dir, spec.index)
    journal = Journal(journal_path(spec.out_dir, spec.index))
    done = set(existing[ID]) if existing is not None else set()
    done |= {r["id"] for r in journal.read()}
    todo = spec.requests[~spec.requests[ID].isin(done)]
    stop_reason = None
    try:
        if len(todo):
            stop_reason = coordinator.stop().result()
            if stop_reason is None:
                stop_reason = _complete(spec, todo, journal, coordinator, semaphore, share_leases)
    finally:
        journal.close()
    new_rows = write_part(spec.out_dir, spec.index, spec.requests, existing, journal, done, spec.postprocess)
    return ShardResult(spec.index, new_rows, stop_reason)


def _complete(spec: ShardSpec, todo: pd.DataFrame, journal: Journal, coordinator: Any,
              semaphore: Any, share_leases: bool = False) -> str | None:
    """Send the shard's rows through this worker's pool; the run's stop reason, if it stopped."""
    rows = spec.rows

    def record(row_id: str, c: Completion) -> None:
        journal.append(rows.completed(row_id, c))

    def finish(row_id: str, turns: list[dict]) -> str:
        """Journal a conversation whose every turn is in (the row); its text."""
        row = rows.conversation(row_id, turns)
        journal.append(row)
        return row[spec.completion_column]

    jobs: dict[str, dict] = {}
    dialogue = spec.dialogue
    if dialogue is not None:
        journaled = turns_of(journal.events())
        for row in todo.drop(columns=[MESSAGES]).to_dict("records"):
            if dialogue.applies(row):
                turns = journaled.get(row[ID], [])[: dialogue.requests]
                if len(turns) == dialogue.requests:  # killed between its last turn and its row
                    finish(row[ID], turns)
                else:
                    jobs[row[ID]] = {"row": row, "turns": turns}
        todo = todo[~todo[ID].isin(journaled.keys() - jobs.keys())]
    backend = open_backend(spec.cfg)  # loads an in-process model here, in the task, not on the event loop
    work = _Work(spec, journal, record, finish)

    def item(row_id: str, messages: list[dict]) -> _Item:
        job = jobs.get(row_id)
        if job is None:
            return _Item(work, row_id, messages)
        return _Item(work, row_id, dialogue.request(job["row"], history(job["turns"])), job)  # type: ignore[union-attr]

    items = [item(row_id, messages) for row_id, messages in zip(todo[ID], todo[MESSAGES], strict=True)]
    if not items:
        return None
    run_on_worker_loop(_enqueue(work, items, backend, coordinator, semaphore, share_leases))
    work.handoff.wait()
    if not work.done.done():
        _secede()  # the pool wants the next shard's rows: let Dask start it while these finish
    return work.done.result()


def _secede() -> None:
    """Leave the Dask worker's thread pool, so it starts its next task now (no-op outside a worker)."""
    from distributed import secede

    with suppress(ValueError):  # not running as a Dask task: nothing to hand over
        secede()


def _send(journal: Journal, row_id: str, messages: list[dict]) -> str:
    """Journal a request before it leaves (a kill after this line may have paid for it); its nonce."""
    nonce = uuid.uuid4().hex[:16]
    journal.sent(nonce, row_id, estimate_prompt_tokens(messages))
    return nonce


@dataclass(eq=False)
class _Work:
    """One shard's rows in a pool: where its completions go, and how many of its requests are queued
    or in flight. ``done`` resolves (the run's stop reason, or the error) once none is in flight and
    none will be sent; ``handoff`` is set once the task may let its worker thread go."""

    spec: ShardSpec
    journal: Journal
    record: Callable[[str, Completion], None]
    finish: Callable[[str, list[dict]], str]
    queued: int = 0
    in_flight: int = 0
    dropped: bool = False
    """Some of its requests will never be sent: the run stopped, or failed (then the shard fails too)."""
    handoff: threading.Event = field(default_factory=threading.Event)
    done: Future = field(default_factory=Future)


@dataclass
class _Item:
    """One request to send: its shard, row, messages, and the conversation it continues (if any)."""

    work: _Work
    row_id: str
    messages: list[dict]
    job: dict | None = None


_POOLS: dict[str, RequestPool] = {}
"""This process's pools, by the run's semaphore name; touched only on the worker's event loop."""


async def _enqueue(work: _Work, items: list[_Item], backend: Backend, coordinator: Any, semaphore: Any,
                   share_leases: bool) -> None:
    key = semaphore.name
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = RequestPool(key, backend, work.spec, coordinator, semaphore, share_leases)
    pool.add(work, items)


class RequestPool:
    """One worker's request slots for one run, shared by every shard the worker runs.

    Up to ``backend.concurrency`` slots each take ``backend.batch_size`` requests per call from one
    queue, in the order the shards handed them in. A server's slot holds one cluster-wide lease
    while the queue has work: a lease per slot, not per request or shard, keeps Dask round trips off
    the per-request path (with ``share_leases``, when other workers run shards of the run too, a
    slot hands its lease round at each shard boundary so they get their share). The coordinator is
    told about completions after every batch of an in-process model (slow enough that the round trip
    costs nothing); under ``max_cost_usd`` after every completion, or, when this is the run's only
    worker, once the spend it has not told could reach what is left of the budget; and otherwise
    twice a second (it then only feeds the progress bar). A stop
    (budget, gate) or an error is the run's: queued requests are dropped, those in flight finish
    and are journaled, and every shard then ends with it.
    """

    def __init__(self, key: str, backend: Backend, spec: ShardSpec, coordinator: Any, semaphore: Any,
                 share_leases: bool = False) -> None:
        self.key = key
        self.share_leases = share_leases
        self.backend = backend
        self.cfg, self.sampling, self.seed, self.gate = spec.cfg, spec.sampling, spec.seed, spec.gate
        self.dialogue = spec.dialogue
        self.coordinator, self.semaphore = coordinator, semaphore
        self.queue: deque[_Item] = deque()
        self.works: list[_Work] = []
        self.slots = 0
        self.holding = 0  # slots holding (or acquiring) a lease
        self.stop: str | None = None
        self.error: BaseException | None = None
        self.unsent: list[Any] = [0, 0, 0, []]  # prompt tokens, completion tokens, requests, gate keys
        self.exact = self.cfg.max_cost_usd is not None
        # the run's only worker knows when its own unrecorded spend could reach the budget: it tells
        # the coordinator then, not after every request (others' spend it cannot see)
        self.sole_spender = self.exact and not share_leases
        self.budget_left = 0.0  # as of the last record; unknown (so nothing to spare) until then
        self.recording_usd = 0.0  # handed to the coordinator, not yet in budget_left
        self.limited = backend.remote and bool(self.cfg.requests_per_minute or self.cfg.tokens_per_minute)
        self.stagger = min(SLOT_STAGGER_S, MAX_RAMP_S / backend.concurrency)
        self.threads = ThreadPoolExecutor(max_workers=backend.concurrency + 2, thread_name_prefix="generate-limits")
        self.syncing = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()
        self.beat = asyncio.create_task(self._heartbeat())

    @property
    def stopping(self) -> bool:
        return bool(self.stop or self.error)

    def add(self, work: _Work, items: list[_Item]) -> None:
        """Queue a shard's requests behind those already queued, and open slots for them."""
        self.works.append(work)
        work.queued = len(items)
        if self.stopping:
            self._drop_queued()
            self._spawn(self._settle())
            return
        self.queue.extend(items)
        self._fill()
        self._hunger()

    def _fill(self) -> None:
        """Open slots until every queued request has one (at most ``concurrency``)."""
        size = self.backend.batch_size
        want = 0 if self.stopping else min(self.backend.concurrency, -(-len(self.queue) // size))
        for k in range(want - self.slots):
            self.slots += 1
            self._spawn(self._slot(k * self.stagger))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)  # the loop keeps only weak references to its tasks
        task.add_done_callback(self.tasks.discard)

    def _hunger(self) -> None:
        """Let every shard's task go once fewer requests are queued than the slots take in one round:
        the worker then starts its next shard while these are in flight."""
        if self.stopping or len(self.queue) < self.backend.concurrency * self.backend.batch_size:
            for work in self.works:
                work.handoff.set()

    def _blocking(self, fn: Callable, *args: Any) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self.threads, fn, *args)

    async def _slot(self, delay: float) -> None:
        await asyncio.sleep(delay)
        leased = counted = False
        try:
            if self.backend.remote and self.queue:
                self.holding, counted = self.holding + 1, True
                await self._blocking(self.semaphore.acquire)
                leased = True
            if self.exact:
                # the lease may have taken a while: other workers may have spent the budget meanwhile
                # (otherwise the heartbeat brings a stop reason within half a second)
                self.stop = self.stop or await self._blocking(lambda: self.coordinator.stop().result())
            last = None
            while self.queue and not self.stopping:
                if self.share_leases and leased and last is not None and self.queue[0].work is not last:
                    # a shard boundary: other workers' slots may be waiting for a lease
                    await self._blocking(self.semaphore.release)
                    leased = False
                    await self._blocking(self.semaphore.acquire)
                    leased, last = True, None
                    continue
                batch = self._take()
                last = batch[0].work
                await self._send(batch)
        except Exception as e:  # noqa: BLE001 - the run's error, raised by every shard task it ends
            # stop starting new requests; those in flight still finish and are journaled
            self.error = self.error or e
        finally:
            if leased:
                await self._blocking(self.semaphore.release)
            if counted:
                self.holding -= 1
            self.slots -= 1
            self._fill()  # a shard's rows may have arrived while this slot gave its lease back
            await self._settle()

    def _take(self) -> list[_Item]:
        """The next batch: up to ``batch_size`` queued requests of one shard (a batch shares a seed)."""
        batch = [self.queue.popleft()]
        while len(batch) < self.backend.batch_size and self.queue and self.queue[0].work is batch[0].work:
            batch.append(self.queue.popleft())
        work = batch[0].work
        work.queued -= len(batch)
        work.in_flight += len(batch)
        self._hunger()
        return batch

    async def _send(self, batch: list[_Item]) -> None:
        work, sampling = batch[0].work, self.sampling
        try:
            if self.limited:
                for it in batch:
                    estimate = sum(len(m["content"]) for m in it.messages) / 4 + sampling.max_tokens
                    wait = await self._blocking(lambda e=estimate: self.coordinator.reserve(e).result())
                    if wait > 0:
                        await asyncio.sleep(wait)
            nonces = [_send(work.journal, it.row_id, it.messages) for it in batch]
            # one sampling seed per batch, from the run seed and the batch's first row
            seed = int(stable_hash([self.seed, batch[0].row_id], 8), 16) if len(batch) > 1 or \
                self.backend.batch_size > 1 else 0
            try:
                completions = await self.backend.complete([it.messages for it in batch], sampling, seed)
            except GenerateError:
                for nonce, it in zip(nonces, batch, strict=True):
                    work.journal.failed(nonce, it.row_id)  # an error answer is not a billed completion
                raise
            unsent = self.unsent
            for it, nonce, completion in zip(batch, nonces, completions, strict=True):
                text: str | None = completion.text
                if it.job is None:
                    work.record(it.row_id, completion)
                else:
                    text = self._next_turn(it, nonce, completion)
                unsent[0] += completion.prompt_tokens
                unsent[1] += completion.completion_tokens
                unsent[2] += 1
                if self.gate is not None and text is not None:
                    unsent[3].append(self.gate.key(text))
        except BaseException:
            work.dropped = True  # its rows in this batch are not done: the shard fails with the run
            raise
        finally:
            work.in_flight -= len(batch)
        unrecorded = self._unsent_usd() + self.recording_usd
        if self.backend.batch_size > 1 or (self.exact and not (self.sole_spender and unrecorded < self.budget_left)):
            await self._sync_ledger()
        if not work.queued and not work.in_flight:
            await self._settle()

    def _next_turn(self, it: _Item, nonce: str, c: Completion) -> str | None:
        """Journal an answered turn; queue the conversation's next request first, or finish the row (its text)."""
        dialogue, job, work = self.dialogue, it.job, it.work
        assert dialogue is not None and job is not None
        k = len(job["turns"])
        turn = turn_entry(k, dialogue.role(k), dialogue.clean(c.text), c)
        work.journal.turn(nonce, it.row_id, **turn)
        job["turns"].append(turn)
        if len(job["turns"]) < dialogue.requests:
            self.queue.appendleft(_Item(work, it.row_id, dialogue.request(job["row"], history(job["turns"])), job))
            work.queued += 1
            return None
        return work.finish(it.row_id, job["turns"])

    async def _sync_ledger(self) -> None:
        # one at a time: a slot that finds its completion already sent by the heartbeat must still
        # wait for that call's answer (the stop reason) before it starts another paid request
        async with self.syncing:
            p, c, n, keys = self.unsent
            if n:
                self.unsent = [0, 0, 0, []]
                usd = (p * self.cfg.price_input_per_million + c * self.cfg.price_output_per_million) / 1e6
                self.recording_usd += usd
                reason = await self._blocking(lambda: self.coordinator.record(p, c, n, keys).result())
                self.stop = self.stop or reason
                if self.sole_spender:
                    self.budget_left = await self._blocking(lambda: self.coordinator.budget_left().result())
                self.recording_usd -= usd
                if self.stopping:
                    self._drop_queued()

    def _unsent_usd(self) -> float:
        p, c = self.unsent[0], self.unsent[1]
        return (p * self.cfg.price_input_per_million + c * self.cfg.price_output_per_million) / 1e6

    def _drop_queued(self) -> None:
        """The run stopped: nothing queued will be sent."""
        self.queue.clear()
        for work in self.works:
            if work.queued:
                work.queued, work.dropped = 0, True
        self._hunger()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self._sync_ledger()

    async def _settle(self) -> None:
        """End the shards none of whose requests is queued or in flight; close the pool once idle."""
        if self.stopping:
            self._drop_queued()
        # with nothing left to send, a shard ends once the slots have given their leases back: the
        # driver closes the semaphore after the last shard
        ended = [w for w in self.works if not w.queued and not w.in_flight] if self.queue or not self.holding else []
        if ended:
            await self._sync_ledger()  # the coordinator counts a shard's requests before its task returns
        for work in ended:
            if work not in self.works:
                continue  # settled by a concurrent call meanwhile
            self.works.remove(work)
            if self.error is not None and work.dropped:
                work.done.set_exception(self.error)
            else:
                work.done.set_result(self.stop)
            work.handoff.set()
        if not self.works and not self.slots and _POOLS.get(self.key) is self:
            del _POOLS[self.key]
            self.beat.cancel()
            self.threads.shutdown(wait=False)
