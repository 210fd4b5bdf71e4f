"""The online executor: a wave's shards as Dask tasks whose requests go out now, under limits that
hold across the cluster.

One task per shard (:func:`~pipeline.llm.shard.run_shard`); the shards of a worker share its
request slots. ``generate.concurrency`` in-flight requests are a ``distributed.Semaphore``;
``requests_per_minute``, ``tokens_per_minute``, the budget and the caller's gate are a
:class:`~pipeline.llm.limits.Coordinator` actor. The driver only watches: a progress bar, the
rate limit that holds the run back (said once), and the first failed shard's error.
"""

from __future__ import annotations

import sys
import time
import uuid
from contextlib import ExitStack, suppress
from typing import Any

from pydantic import SecretStr

from pipeline.llm.backends import resolve_endpoint
from pipeline.llm.config import LLMConfig
from pipeline.llm.ledger import Ledger
from pipeline.llm.limits import Coordinator
from pipeline.llm.shard import ShardResult, ShardSpec, run_shard
from pipeline.llm.spec import Job, Outcome, RunSpec
from pipeline.progress import progress

_NOT_LEDGER = ("stop_reason", "limited_by")  # what the coordinator's snapshot says besides the ledger


class OnlineExecutor:
    """Runs each wave on one cluster, started at the first wave that has requests to send and kept
    for the later ones: ``scheduler``; else, for a server, one in-process worker (its requests wait on
    the network, and one event loop carries hundreds a second) unless ``workers`` asks for more;
    else a LocalCluster of ``workers`` processes."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.client: Any = None
        self.in_process = spec.scheduler is None and (spec.workers or 1) == 1 and spec.llm.backend == "openai"
        self._stack = ExitStack()

    def __enter__(self) -> OnlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def ledger(self, **totals: Any) -> Ledger:
        """The run's ledger at online prices."""
        llm = self.spec.llm
        return Ledger(llm.price_input_per_million, llm.price_output_per_million, llm.max_cost_usd, **totals)

    def prepare(self, restart: bool, dry_run: bool) -> None:
        """Nothing of its own to check: the journals are the run skeleton's."""

    def in_flight(self) -> set[str]:
        """Rows sent and not yet answered by an earlier run: none (a killed run's are lost, see the ledger)."""
        return set()

    def estimate(self, estimate: dict[str, Any], done: set[str]) -> dict[str, Any]:
        """The dry run's estimate as the skeleton made it."""
        return estimate

    def execute(self, job: Job) -> Outcome:
        """Complete the job's shards; the ledger and stop reason as the coordinator saw them at the end."""
        if not job.todo:
            return Outcome(ledger=job.ledger.as_dict())
        spec = job.spec
        llm = _resolved(spec.llm)
        specs = [ShardSpec(k, job.shards[k], spec.out_dir, llm, spec.requested, spec.seed, spec.postprocess,
                           spec.completion_column, spec.gate, spec.dialogue) for k in job.todo]
        results, snapshot = self._run(specs, job)
        stop_reason = snapshot.get("stop_reason") or next((r.stop_reason for r in results if r.stop_reason), None)
        return Outcome(ledger={k: v for k, v in snapshot.items() if k not in _NOT_LEDGER},
                       new_rows=sum(r.new_rows for r in results), stop_reason=stop_reason, changed=True)

    def _cluster(self) -> Any:
        if self.client is None:
            from pipeline.cluster import dask_client

            spec = self.spec
            self.client = self._stack.enter_context(dask_client(
                spec.scheduler, 1 if self.in_process else spec.workers, processes=not self.in_process))
        return self.client

    def _run(self, specs: list[ShardSpec], job: Job) -> tuple[list[ShardResult], dict[str, Any]]:
        from distributed import Semaphore, wait

        llm, stage, ledger = self.spec.llm, self.spec.stage, job.ledger
        client = self._cluster()
        # keep the future: the actor lives only as long as a future refers to it
        coordinator_future = client.submit(Coordinator, ledger, llm.requests_per_minute, llm.tokens_per_minute,
                                           self.spec.gate, actor=True)
        coordinator = coordinator_future.result()
        semaphore = Semaphore(max_leases=llm.concurrency, name=f"{stage}-{uuid.uuid4().hex}")
        # with several workers a pool hands its leases round at each shard boundary, so every worker
        # gets its share; alone, it keeps them
        share_leases = not self.in_process and len(client.scheduler_info()["workers"]) > 1
        futures = [client.submit(run_shard, spec, coordinator, semaphore, share_leases, pure=False,
                                 key=f"{stage}-shard-{spec.index}-{uuid.uuid4().hex}")
                   for spec in specs]
        first = ledger.requests
        rows_done, total = len(job.done), job.total
        # a bar on a terminal, one line per interval in a log (tqdm's frames would flood it)
        bar = progress(total=total, initial=rows_done, unit="row", desc=stage)
        to_go = total - rows_done

        def rows_at(requests: int) -> int:
            # a conversation takes a request per turn: rows are estimated from the requests they need
            sent = requests - first
            return rows_done + (sent if job.requests_to_go is None else min(to_go, sent * to_go // job.requests_to_go))
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


def _resolved(llm: LLMConfig) -> LLMConfig:
    """``llm`` with the endpoint and key resolved here: a remote cluster's workers lack the driver's
    environment."""
    if llm.backend != "openai":
        return llm
    base_url, key = resolve_endpoint(llm)
    return llm.model_copy(update={"base_url": base_url, "api_key": SecretStr(key)})
