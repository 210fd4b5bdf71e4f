"""Run LLM requests on Dask with cluster-wide limits, retries, resume and a cost ledger.

``run_requests`` is the engine (shared with the ``annotate`` stage); ``generate`` samples seeds,
renders the prompts and hands them to it.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import SecretStr
from tqdm.auto import tqdm

from pipeline.config import Config, public_dict
from pipeline.errors import GenerateError
from pipeline.generate.backends import resolve_endpoint
from pipeline.generate.journal import Journal, journal_path
from pipeline.generate.ledger import Ledger
from pipeline.generate.limits import Coordinator
from pipeline.generate.shard import COMPLETION_COLUMNS, ShardResult, ShardSpec, run_shard
from pipeline.io import build_manifest, list_shards, read_parquet, write_json


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


def run_requests(cfg: Config, requests: pd.DataFrame, out_dir: Path, *, stage: str,
                 postprocess: Callable[[dict], dict] | None = None, dry_run: bool = False,
                 manifest_fields: dict[str, Any] | None = None,
                 completion_column: str = "text") -> RunSummary:
    """Complete every request with ``cfg.generate``'s backend; write shards and a manifest to ``out_dir``.

    Contract (the ``annotate`` stage relies on it):
    - ``requests``: one row per request; ``id`` (unique str, the row key), ``messages`` (a list of
      ``{"role", "content"}`` dicts) and any passthrough columns, copied to the output unchanged
      (a passthrough named like an output column is an error, never overwritten).
    - Output: ``out_dir/part-NNNNN.parquet`` (zstd, written atomically; row ``k*shard_size`` onwards in
      shard ``k``) with ``id``, the passthrough columns, the completion (in ``completion_column``),
      ``model``, ``temperature``, ``max_tokens``, ``finish_reason``, ``prompt_tokens``,
      ``completion_tokens``, ``latency_s``, ``flags`` (``truncated`` / ``empty`` / ``refusal``), plus
      what ``postprocess(row) -> dict`` returns for each completed row (it runs before the row is
      written; ``messages`` is not kept); and ``out_dir/manifest.json`` (public config, versions,
      git sha, totals, ledger).
    - Execution: one Dask task per shard (``cfg.scheduler`` or a LocalCluster of ``cfg.workers``);
      ``generate.concurrency`` in-flight requests and ``generate.requests_per_minute`` /
      ``tokens_per_minute`` hold across the cluster; transient errors are retried, fatal ones raise
      ``GenerateError`` with a one-line cause.
    - Resume: every completion is journaled the moment it arrives; a rerun with the same requests
      skips ids already written and never requests a completed row again.
    - ``generate.max_cost_usd`` (counting rows already on disk) stops starting new requests; in-flight
      ones finish and are written; ``RunSummary.stop_reason`` says why. ``dry_run`` calls no model
      and returns the estimate of requests, tokens and cost.
    """
    start = time.perf_counter()
    gen = cfg.generate
    _check_requests(requests, completion_column)
    out_dir = Path(out_dir)
    shards = [requests.iloc[k:k + gen.shard_size] for k in range(0, len(requests), gen.shard_size)]
    done_ids, spent = _scan(out_dir, shards)
    ledger = Ledger(gen.price_input_per_million, gen.price_output_per_million, gen.max_cost_usd,
                    requests=len(done_ids), prompt_tokens=spent[0], completion_tokens=spent[1])
    pending = requests[~requests["id"].isin(done_ids)]
    todo = [k for k, frame in enumerate(shards)
            if not frame["id"].isin(done_ids).all() or journal_path(out_dir, k).exists()]

    if dry_run:
        estimate = estimate_requests(pending, gen.max_tokens, ledger)
        _print_estimate(stage, len(requests), len(done_ids), estimate)
        return RunSummary(out_dir, len(requests), len(done_ids), 0, ledger.as_dict(), dry_run=True,
                          elapsed_s=time.perf_counter() - start, estimate=estimate)

    results: list[ShardResult] = []
    snapshot = {**ledger.as_dict(), "stop_reason": None}
    if todo:
        results, snapshot = _run_on_dask(cfg, shards, todo, out_dir, postprocess, ledger, stage,
                                         completion_column)
    rows = sum(len(read_parquet(p, ["id"])) for p in list_shards(out_dir))
    if (out_dir / ".journal").is_dir() and not any((out_dir / ".journal").iterdir()):
        (out_dir / ".journal").rmdir()
    stop_reason = snapshot.get("stop_reason") or next((r.stop_reason for r in results if r.stop_reason), None)
    summary = RunSummary(out_dir, len(requests), rows, sum(r.new_rows for r in results),
                         {k: v for k, v in snapshot.items() if k != "stop_reason"}, stop_reason,
                         elapsed_s=round(time.perf_counter() - start, 3))
    manifest = build_manifest(stage, public_dict(cfg), totals={
        "requests": len(requests), "rows": rows, "new_rows": summary.new_rows,
        "shards": len(list_shards(out_dir)), "complete": summary.complete, "elapsed_s": summary.elapsed_s},
        ledger=summary.ledger, stop_reason=stop_reason, **(manifest_fields or {}))
    write_json(manifest, out_dir / "manifest.json")
    _print_summary(stage, summary)
    return summary


def estimate_requests(pending: pd.DataFrame, max_tokens: int, ledger: Ledger) -> dict[str, Any]:
    """Requests still to send, their tokens (prompt ~ chars/4; completion at most max_tokens) and cost."""
    chars = int(sum(sum(len(m["content"]) for m in msgs) for msgs in pending["messages"]))
    prompt_tokens = chars // 4 + 4 * len(pending)
    completion_tokens = max_tokens * len(pending)
    return {"requests": len(pending), "prompt_tokens": prompt_tokens,
            "max_completion_tokens": completion_tokens,
            "max_cost_usd": round(ledger.cost_of(prompt_tokens, completion_tokens), 6),
            "spent_usd": round(ledger.cost_usd, 6)}


def _check_requests(requests: pd.DataFrame, completion_column: str) -> None:
    for column in ("id", "messages"):
        if column not in requests.columns:
            raise GenerateError(f"requests: missing column '{column}' (need id, messages)")
    clash = [c for c in (completion_column, *COMPLETION_COLUMNS) if c in requests.columns]
    if clash:
        raise GenerateError(f"requests: passthrough column {clash[0]!r} would be overwritten by the "
                            "completion's; rename it or choose another completion_column")
    dup = requests["id"][requests["id"].duplicated()]
    if len(dup):
        raise GenerateError(f"requests: duplicate id {dup.iloc[0]!r}: ids are row keys and must be unique")
    for i, msgs in enumerate(requests["messages"]):
        if not len(msgs) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in msgs):
            raise GenerateError(f"requests row {i}: 'messages' must be a non-empty list of "
                                "{'role', 'content'} dicts")


def _scan(out_dir: Path, shards: list[pd.DataFrame]) -> tuple[set[str], tuple[int, int]]:
    """Ids already completed (parts + journals) and their tokens; a part of another plan is an error."""
    done: set[str] = set()
    prompt = completion = 0
    for part in list_shards(out_dir):
        k = int(part.stem.split("-")[1])
        table = read_parquet(part, ["id", "prompt_tokens", "completion_tokens"])
        planned = set(shards[k]["id"]) if k < len(shards) else set()
        if not set(table["id"]) <= planned:
            raise GenerateError(f"{part}: holds rows this config does not plan (changed templates, seed, model, "
                                "sampling or shard_size?); use a new run_dir or restore the config")
        done |= set(table["id"])
        prompt += int(table["prompt_tokens"].sum())
        completion += int(table["completion_tokens"].sum())
    for k in range(len(shards)):
        planned = set(shards[k]["id"])
        for rec in Journal(journal_path(out_dir, k)).read():
            if rec["id"] in planned and rec["id"] not in done:
                done.add(rec["id"])
                prompt += rec["prompt_tokens"]
                completion += rec["completion_tokens"]
    return done, (prompt, completion)


def _run_on_dask(cfg: Config, shards: list[pd.DataFrame], todo: list[int], out_dir: Path,
                 postprocess: Callable | None, ledger: Ledger, stage: str,
                 completion_column: str) -> tuple[list[ShardResult], dict[str, Any]]:
    from distributed import Semaphore, wait

    from pipeline.cluster import dask_client

    gen = cfg.generate
    if gen.backend == "openai":
        # resolved here, not on the workers: a remote cluster's workers lack the driver's environment
        base_url, key = resolve_endpoint(gen)
        gen = gen.model_copy(update={"base_url": base_url, "api_key": SecretStr(key)})
    total = sum(len(s) for s in shards)
    with dask_client(cfg.scheduler, cfg.workers) as client:
        # keep the future: the actor lives only as long as a future refers to it
        # the opening gate is the generate stage's (other stages' answers are labels, not prose)
        max_opening_share = gen.diversity_max_opening_share \
            if stage == "generate" and gen.diversity_gate == "fail" else None
        coordinator_future = client.submit(Coordinator, ledger, gen.requests_per_minute, gen.tokens_per_minute,
                                           max_opening_share, actor=True)
        coordinator = coordinator_future.result()
        semaphore = Semaphore(max_leases=gen.concurrency, name=f"{stage}-{uuid.uuid4().hex}")
        futures = [client.submit(run_shard,
                                 ShardSpec(k, shards[k], out_dir, gen, cfg.seed, postprocess, completion_column),
                                 coordinator, semaphore, pure=False, key=f"{stage}-shard-{k}-{uuid.uuid4().hex}")
                   for k in todo]
        first = ledger.requests
        bar = tqdm(total=total, initial=first, unit="row", desc=stage, dynamic_ncols=True, file=sys.stderr)
        began = time.perf_counter()
        try:
            while True:
                snapshot = coordinator.snapshot().result()
                elapsed = max(time.perf_counter() - began, 1e-9)
                bar.update(snapshot["requests"] - bar.n)
                tokens = snapshot["prompt_tokens"] + snapshot["completion_tokens"] - ledger.prompt_tokens \
                    - ledger.completion_tokens
                bar.set_postfix_str(f"req/s={(snapshot['requests'] - first) / elapsed:.1f} "
                                    f"tok/s={tokens / elapsed:.0f} cost=${snapshot['cost_usd']:.4f}")
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
            bar.update(snapshot["requests"] - bar.n)
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
    print(f"{stage}: {s.rows}/{s.total} rows in {s.out_dir} ({status}); {s.new_rows} new this run; "
          f"{led['prompt_tokens']:,} prompt + {led['completion_tokens']:,} completion tokens, "
          f"${led['cost_usd']:.4f}; {s.elapsed_s:.1f}s")


def summary_dict(s: RunSummary) -> dict[str, Any]:
    return {**asdict(s), "out_dir": str(s.out_dir)}


def generate(cfg: Config, dry_run: bool = False, restart: bool = False, **_: Any) -> int:
    """`textbook generate`: sample seeds, render prompts, complete them, report cost and diversity.

    Writes ``RUN_DIR/generated/part-NNNNN.parquet`` and ``manifest.json``; exit code 0 when the run is
    complete or stopped cleanly by ``generate.max_cost_usd``, 1 when the diversity gate fails.
    """
    from pipeline.generate.diversity import diversity_report
    from pipeline.generate.plan import plan_requests
    from pipeline.io import read_json, read_shards

    gen = cfg.generate
    requests, templates = plan_requests(cfg)
    out_dir = Path(cfg.run_dir) / "generated"
    template_info = {name: {"sha": t.sha, "requires": list(t.requires), "about": t.about}
                     for name, t in templates.items()}
    summary = run_requests(cfg, requests, out_dir, stage="generate", dry_run=dry_run,
                           manifest_fields={"templates": template_info})
    if dry_run:
        print(f"first prompt ({requests['template'].iloc[0]}):\n{requests['prompt'].iloc[0]}"
              if len(requests) else "no rows planned (generate.num_samples=0)")
        return 0
    if summary.rows == 0:
        return 0
    texts = read_shards(out_dir, ["text"])["text"].tolist()
    report = diversity_report(texts)
    gate = _diversity_gate(report, gen.diversity_max_opening_share, gen.diversity_gate)
    print(f"diversity: distinct-1/2/3 {report['distinct_1']:.3f}/{report['distinct_2']:.3f}/"
          f"{report['distinct_3']:.3f}; top opening {report['top_opening']!r} in "
          f"{report['top_opening_share']:.0%} of rows; near-duplicates {report['near_duplicate_rate']:.1%}")
    manifest = read_json(out_dir / "manifest.json")
    manifest["diversity"] = {**report, "gate": gate}
    write_json(manifest, out_dir / "manifest.json")
    if gate:
        print(f"{'error' if gen.diversity_gate == 'fail' else 'warning'}: {gate}", file=sys.stderr)
        if gen.diversity_gate == "fail":
            return 1
    return 0


def _diversity_gate(report: dict[str, Any], max_share: float, mode: str) -> str | None:
    if mode == "off" or report["texts"] < 10 or report["top_opening_share"] <= max_share:
        return None
    return (f"opening {report['top_opening']!r} starts {report['top_opening_share']:.0%} of rows, over "
            f"generate.diversity_max_opening_share={max_share:.0%}; vary the prompts or raise the limit")
