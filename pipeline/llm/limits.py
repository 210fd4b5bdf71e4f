"""Cluster-wide limits: requests/tokens per minute (token buckets), the shared cost ledger, the run's gate.

One ``Coordinator`` lives as a Dask actor on one worker; every shard task, on any worker, asks it
before each request (``reserve``: how long to wait) and tells it after (``record``: whether the
budget is spent, or the caller's :class:`CompletionGate` trips), so rate limits, ``max_cost_usd``
and the gate hold for the whole cluster, not per worker.
Concurrency is held by a ``distributed.Semaphore`` (its leases expire if a worker dies).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Protocol

from pipeline.llm.ledger import Ledger


class CompletionGate(Protocol):
    """A check over a run's completions that stops it early (the caller's: e.g. generate's opening gate).

    ``key`` runs on the worker, once per completion: the little the gate needs of the text (what
    crosses the network to the coordinator). ``observe`` runs in the coordinator with the keys of
    newly completed rows and returns the stop reason once the gate trips.
    """

    def key(self, text: str) -> str: ...

    def observe(self, keys: list[str]) -> str | None: ...


class TokenBucket:
    """A token bucket refilled at ``per_minute / 60`` per second, holding at most ``burst``.

    ``reserve`` always grants and returns how many seconds the caller must wait first: the level may
    go negative, which queues later callers behind earlier ones in arrival order.
    """

    def __init__(self, per_minute: float, burst: float | None = None) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst if burst is not None else max(1.0, self.rate)
        self.level = self.burst
        self.stamp = time.monotonic()

    def reserve(self, amount: float, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        self.level -= amount
        return max(0.0, -self.level / self.rate)


class Coordinator:
    """Shared state of one run (a Dask actor): rate buckets, the ledger and the stop reason."""

    def __init__(self, ledger: Ledger, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, gate: CompletionGate | None = None) -> None:
        self.ledger = ledger
        self.requests = TokenBucket(requests_per_minute) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute) if tokens_per_minute else None
        self.gate = gate
        self.stop_reason: str | None = None
        self.limited_by: str | None = None
        """The rate limit that first made a request wait (the driver says so once)."""
        self._check_budget()

    def reserve(self, tokens: float) -> float:
        """Seconds to wait before sending a request of about ``tokens`` tokens (prompt + max out)."""
        wait = 0.0
        if self.requests:
            wait = self.requests.reserve(1)
            if wait > 0 and self.limited_by is None:
                self.limited_by = (f"generate.requests_per_minute={self.requests.rate * 60:g} "
                                   f"({self.requests.rate:.3g} requests/s)")
        if self.tokens:
            # a request larger than the bucket would wait forever; let it through at full bucket
            self.tokens.burst = max(self.tokens.burst, tokens)
            token_wait = self.tokens.reserve(tokens)
            if token_wait > wait and self.limited_by is None:
                self.limited_by = (f"generate.tokens_per_minute={self.tokens.rate * 60:g} (about "
                                   f"{self.tokens.rate / max(tokens, 1):.0f} requests/s of ~{tokens:.0f} prompt + "
                                   "max_tokens tokens)")
            wait = max(wait, token_wait)
        return wait

    def record(self, prompt_tokens: int, completion_tokens: int, requests: int = 1,
               keys: Iterable[str] = ()) -> str | None:
        """Add completions to the ledger (and their gate ``keys``, one per completion, to the gate);
        returns the stop reason once the budget is spent or the gate trips."""
        self.ledger.add(prompt_tokens, completion_tokens, requests)
        self._check_budget()
        if self.gate is not None:
            reason = self.gate.observe(list(keys))
            self.stop_reason = self.stop_reason or reason
        return self.stop_reason

    def stop(self) -> str | None:
        return self.stop_reason

    def budget_left(self) -> float | None:
        """Dollars left of ``max_cost_usd`` (None: no budget)."""
        if self.ledger.max_cost_usd is None:
            return None
        return self.ledger.max_cost_usd - self.ledger.cost_usd

    def snapshot(self) -> dict:
        return {**self.ledger.as_dict(), "stop_reason": self.stop_reason, "limited_by": self.limited_by}

    def _check_budget(self) -> None:
        if self.stop_reason is None and self.ledger.over_budget:
            self.stop_reason = (f"generate.max_cost_usd reached: spent ${self.ledger.cost_usd:.4f} "
                                f"of ${self.ledger.max_cost_usd:.4f}")
