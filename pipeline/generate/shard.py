"""One shard of a run, executed as one Dask task: request the missing rows, journal, compact.

The task body is synchronous (what Dask runs); the requests run on the worker's long-lived event
loop through the one :class:`~pipeline.generate.backends.Backend` interface: up to the backend's
``concurrency`` slots, each sending ``batch_size`` conversations per call. A server's client keeps
its connections from one shard to the next, and each of its slots holds one lease of the run's
cluster-wide ``distributed.Semaphore`` while it works through the queue. Blocking Dask calls
(semaphore, coordinator actor) go to a thread pool so they never stall the event loop.

Rows that ``ShardSpec.dialogue`` builds turn by turn (conversations) go through the same queue one
request per turn: each answered turn is journaled, and the row's next request joins the back of the
queue, until the last turn completes the row (its ``messages``, ``text`` and summed tokens).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.cluster import run_on_worker_loop
from pipeline.errors import GenerateError
from pipeline.generate.backends import Backend, Completion, Sampling, open_backend
from pipeline.generate.config import GenerateConfig
from pipeline.generate.conversation import TurnByTurn, render_conversation
from pipeline.generate.flags import completion_flags
from pipeline.generate.journal import EVENT, Journal, estimate_prompt_tokens, journal_path, turns_of
from pipeline.generate.limits import CompletionGate
from pipeline.io import read_parquet, stable_hash, write_parquet
from pipeline.rundir import ID, MESSAGES, TEXT, shard_path

# Slots open this far apart (the whole ramp at most 1 s). Started together, their requests come back
# together, queue on the event loop for as long as the burst takes to process, and stay bunched
# from then on (measured: C=64, L=0.2 s: median latency 210 ms together, 204 ms staggered by 2 ms).
SLOT_STAGGER_S = 0.002
MAX_RAMP_S = 1.0

# What the engine adds to every row besides the completion itself (``ShardSpec.completion_column``).
COMPLETION_COLUMNS = ["model", "temperature", "max_tokens", "finish_reason", "prompt_tokens",
                      "completion_tokens", "latency_s", "flags"]


@dataclass
class ShardSpec:
    """What one task needs: its rows (``id``, ``messages``, passthrough columns), where they go, the
    backend's section, the sampling asked for, and the run's gate (whose ``key`` runs here)."""

    index: int
    requests: pd.DataFrame
    out_dir: Path
    cfg: GenerateConfig
    sampling: Sampling
    seed: int = 0
    postprocess: Callable[[dict], dict] | None = None
    completion_column: str = TEXT
    gate: CompletionGate | None = None
    dialogue: TurnByTurn | None = None
    """Builds the rows it applies to turn by turn (one request per turn); None: one request per row."""


@dataclass
class ShardResult:
    index: int
    new_rows: int
    stop_reason: str | None = None


def run_shard(spec: ShardSpec, coordinator: Any, semaphore: Any) -> ShardResult:
    """Complete every row of the shard not yet on disk, then write ``part-NNNNN.parquet`` atomically."""
    part = shard_path(spec.out_dir, spec.index)
    existing = read_parquet(part) if part.exists() else None
    journal = Journal(journal_path(spec.out_dir, spec.index))
    done = set(existing[ID]) if existing is not None else set()
    done |= {r["id"] for r in journal.read()}
    todo = spec.requests[~spec.requests[ID].isin(done)]
    stop_reason = None
    try:
        if len(todo):
            stop_reason = coordinator.stop().result()
            if stop_reason is None:
                stop_reason = _complete(spec, todo, journal, coordinator, semaphore)
    finally:
        journal.close()
    events = journal.events()
    fresh = [r for r in events if EVENT not in r]
    if fresh or existing is None:
        table = _compact(spec, existing, fresh)
        if len(table):
            write_parquet(table, part)
    finished = done | {r["id"] for r in fresh}
    if not any(row_id not in finished for row_id in turns_of(events)):
        journal.remove()  # else an unfinished conversation's paid turns stay for the rerun to continue
    return ShardResult(spec.index, len(fresh), stop_reason)


def _complete(spec: ShardSpec, todo: pd.DataFrame, journal: Journal, coordinator: Any,
              semaphore: Any) -> str | None:
    cfg, sampling = spec.cfg, spec.sampling

    def record(row_id: str, c: Completion) -> None:
        journal.append({
            "id": row_id, spec.completion_column: c.text, "model": cfg.model, "temperature": sampling.temperature,
            "max_tokens": sampling.max_tokens, "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "latency_s": c.latency_s, "flags": completion_flags(c.text, c.finish_reason)})

    def finish(row_id: str, turns: list[dict]) -> str:
        """Journal a conversation whose every turn is in: the row, with the turns' summed cost; its text."""
        messages = [{"role": t["role"], "content": t["content"]} for t in turns]
        text = render_conversation(messages)
        flags = [f for t in turns for f in completion_flags(t["content"], t["finish_reason"])]
        journal.append({
            "id": row_id, spec.completion_column: text, MESSAGES: messages, "requests": len(turns),
            "model": cfg.model, "temperature": sampling.temperature, "max_tokens": sampling.max_tokens,
            "finish_reason": turns[-1]["finish_reason"],
            "prompt_tokens": sum(t["prompt_tokens"] for t in turns),
            "completion_tokens": sum(t["completion_tokens"] for t in turns),
            "latency_s": round(sum(t["latency_s"] for t in turns), 4), "flags": list(dict.fromkeys(flags))})
        return text

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
    backend = open_backend(cfg)  # loads an in-process model here, in the task, not on the event loop
    return run_on_worker_loop(_complete_async(spec, backend, todo, journal, record, coordinator, semaphore,
                                              jobs, finish))


def _send(journal: Journal, row_id: str, messages: list[dict]) -> str:
    """Journal a request before it leaves (a kill after this line may have paid for it); its nonce."""
    nonce = uuid.uuid4().hex[:16]
    journal.sent(nonce, row_id, estimate_prompt_tokens(messages))
    return nonce


async def _complete_async(spec: ShardSpec, backend: Backend, todo: pd.DataFrame, journal: Journal,
                          record: Callable, coordinator: Any, semaphore: Any, jobs: dict[str, dict] | None = None,
                          finish: Callable | None = None) -> str | None:
    """Up to ``backend.concurrency`` slots, each taking ``backend.batch_size`` requests per call.

    A server's slot holds one cluster-wide lease while it works through the queue: a lease per slot,
    not per request, keeps Dask round trips off the per-request path. The coordinator is told about
    every completion at once when a budget or rate limit needs it, or after every batch of an
    in-process model (slow enough that the round trip costs nothing), and otherwise twice a second
    (it then only feeds the progress bar).
    """
    cfg, sampling, gate = spec.cfg, spec.sampling, spec.gate
    loop = asyncio.get_running_loop()
    size = backend.batch_size
    width = min(backend.concurrency, -(-len(todo) // size))
    pool = ThreadPoolExecutor(max_workers=width + 2, thread_name_prefix="generate-limits")
    jobs = jobs or {}
    dialogue = spec.dialogue

    def item(row_id: str, messages: list[dict]) -> tuple[str, list[dict], dict | None]:
        job = jobs.get(row_id)
        if job is None:
            return row_id, messages, None
        history = [{"role": t["role"], "content": t["content"]} for t in job["turns"]]
        return row_id, dialogue.request(job["row"], history), job

    queue = deque(item(row_id, messages) for row_id, messages in zip(todo[ID], todo[MESSAGES], strict=True))
    exact = cfg.max_cost_usd is not None
    limited = backend.remote and bool(cfg.requests_per_minute or cfg.tokens_per_minute)
    state: dict[str, Any] = {"stop": None, "error": None, "unsent": [0, 0, 0, []]}

    def blocking(fn: Callable, *args: Any) -> asyncio.Future:
        return loop.run_in_executor(pool, fn, *args)

    syncing = asyncio.Lock()

    async def sync_ledger() -> None:
        # one at a time: a slot that finds its completion already sent by the heartbeat must still
        # wait for that call's answer (the stop reason) before it starts another paid request
        async with syncing:
            p, c, n, keys = state["unsent"]
            if n:
                state["unsent"] = [0, 0, 0, []]
                reason = await blocking(lambda: coordinator.record(p, c, n, keys).result())
                state["stop"] = state["stop"] or reason

    stagger = min(SLOT_STAGGER_S, MAX_RAMP_S / width)

    async def slot(k: int) -> None:
        await asyncio.sleep(k * stagger)
        if backend.remote:
            await blocking(semaphore.acquire)
        try:
            if exact:
                # the lease may have taken a while: other shards may have spent the budget meanwhile
                # (otherwise the heartbeat brings a stop reason within half a second)
                state["stop"] = state["stop"] or await blocking(lambda: coordinator.stop().result())
            while queue and not (state["stop"] or state["error"]):
                batch = [queue.popleft() for _ in range(min(size, len(queue)))]
                if limited:
                    for _, messages, _ in batch:
                        estimate = sum(len(m["content"]) for m in messages) / 4 + sampling.max_tokens
                        wait = await blocking(lambda e=estimate: coordinator.reserve(e).result())
                        if wait > 0:
                            await asyncio.sleep(wait)
                nonces = [_send(journal, row_id, messages) for row_id, messages, _ in batch]
                # one sampling seed per batch, from the run seed and the batch's first row
                seed = int(stable_hash([spec.seed, batch[0][0]], 8), 16) if size > 1 else 0
                try:
                    completions = await backend.complete([m for _, m, _ in batch], sampling, seed)
                except GenerateError:
                    for nonce, (row_id, _, _) in zip(nonces, batch, strict=True):
                        journal.failed(nonce, row_id)  # an error answer is not a billed completion
                    raise
                unsent = state["unsent"]
                for (row_id, _, job), nonce, completion in zip(batch, nonces, completions, strict=True):
                    text: str | None = completion.text
                    if job is None:
                        record(row_id, completion)
                    else:
                        text = _next_turn(journal, dialogue, job, row_id, nonce, completion, queue, finish)
                    unsent[0] += completion.prompt_tokens
                    unsent[1] += completion.completion_tokens
                    unsent[2] += 1
                    if gate is not None and text is not None:
                        unsent[3].append(gate.key(text))
                if exact or size > 1:
                    await sync_ledger()
        except GenerateError as e:
            # stop starting new requests; those in flight still finish and are journaled
            state["error"] = state["error"] or e
        finally:
            if backend.remote:
                await blocking(semaphore.release)

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(0.5)
            await sync_ledger()

    beat = asyncio.create_task(heartbeat())
    try:
        await asyncio.gather(*(slot(k) for k in range(width)))
    finally:
        beat.cancel()
        await sync_ledger()
        pool.shutdown(wait=False)
    if state["error"]:
        raise state["error"]
    return state["stop"]


def _next_turn(journal: Journal, dialogue: TurnByTurn, job: dict, row_id: str, nonce: str, c: Completion,
               queue: deque, finish: Callable) -> str | None:
    """Journal an answered turn; queue the conversation's next request, or finish the row (its text)."""
    k = len(job["turns"])
    turn = {"turn": k, "role": dialogue.role(k), "content": dialogue.clean(c.text), "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "latency_s": c.latency_s}
    journal.turn(nonce, row_id, **turn)
    job["turns"].append(turn)
    if len(job["turns"]) < dialogue.requests:
        history = [{"role": t["role"], "content": t["content"]} for t in job["turns"]]
        queue.append((row_id, dialogue.request(job["row"], history), job))
        return None
    return finish(row_id, job["turns"])


def _compact(spec: ShardSpec, existing: pd.DataFrame | None, fresh: list[dict]) -> pd.DataFrame:
    """Old part + journaled rows (postprocessed, joined to their passthrough columns), in request order."""
    requests = spec.requests
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
    if spec.postprocess is not None and len(new_rows):
        new_rows = pd.DataFrame([{**row, **spec.postprocess(dict(row))}
                                 for row in new_rows.to_dict("records")])
    frames = [f for f in (existing, new_rows) if f is not None and len(f)]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    order = {row_id: i for i, row_id in enumerate(requests[ID])}
    return table.sort_values(ID, key=lambda s: s.map(order)).reset_index(drop=True)
