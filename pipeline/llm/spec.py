"""What a run of the engine is given and what it gives back: :class:`RunSpec` in, :class:`RunSummary`
out; between the run skeleton and an :class:`Executor`, a :class:`Job` per wave and its :class:`Outcome`.

The callers' hooks are typed here too: the :class:`Dialogue` that builds rows turn by turn, the
:class:`WaveGate` that judges a wave before the next is paid for, and ``describe``, the manifest
fields a caller computes from the finished rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd

from pipeline.llm.backends import Sampling
from pipeline.llm.config import LLMConfig
from pipeline.llm.ledger import Ledger
from pipeline.llm.limits import CompletionGate
from pipeline.llm.rows import Postprocess
from pipeline.rundir import TEXT


class Dialogue(Protocol):
    """Builds the rows of one template as conversations, one request a turn (generate's ``TurnByTurn``)."""

    template: str
    """The ``template`` of the rows it builds."""
    requests: int
    """Requests (turns) a conversation takes."""

    def applies(self, row: dict) -> bool: ...

    def role(self, k: int) -> str:
        """Role of the ``k``-th generated message."""
        ...

    def request(self, row: dict, history: list[dict[str, str]]) -> list[dict[str, str]]:
        """The messages of the request that writes the next message of ``history``."""
        ...

    def clean(self, text: str) -> str:
        """A turn's text as the conversation keeps it."""
        ...

    def render(self, messages: list[dict[str, str]]) -> str:
        """The row's text (its completion column) from its messages."""
        ...


class WaveGate(Protocol):
    """Sends a run in waves and judges each before the next is paid for (annotate's failure share)."""

    def waves(self, total: int, resumed: int) -> list[tuple[int, int]]:
        """``(start, end)`` request ranges; the first covers the ``resumed`` rows whose shards are on disk."""
        ...

    def judge(self, out_dir: Path, requests: pd.DataFrame, start: int, end: int) -> str | None:
        """Why the run stops after the wave ``start:end`` of ``requests`` (None: go on)."""
        ...


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
    described: dict[str, Any] = field(default_factory=dict)
    """The manifest fields the caller's ``describe`` computed from the rows."""

    @property
    def complete(self) -> bool:
        return self.rows == self.total


Describe = Callable[[RunSummary, dict[str, Any]], dict[str, Any]]
"""Manifest fields computed from a finished run: ``(summary, the previous manifest or {}) -> fields``."""


@dataclass(frozen=True)
class RunSpec:
    """One run of the engine: which model with which settings, where the rows go, what the caller adds.

    ``llm`` is the engine's section; ``run_dir`` names outputs in lineage, ``seed`` the batches'
    sampling seeds; ``scheduler`` / ``workers`` say where online requests run. The rest is the
    caller's: the sampling every request asks for (the section's when None), the column the
    completion goes to, a postprocess adding columns, a dialogue, a gate that stops the run on what
    the completions say, waves judged one by one, the lineage the rows are built from, and what the
    manifest records (the public ``config``, the section alone when None; fixed ``manifest_fields``;
    fields ``describe`` computes from the rows).
    """

    stage: str
    out_dir: Path
    run_dir: Path
    llm: LLMConfig
    seed: int = 0
    scheduler: str | None = None
    workers: int | None = None
    sampling: Sampling | None = None
    completion_column: str = TEXT
    postprocess: Postprocess | None = None
    dialogue: Dialogue | None = None
    gate: CompletionGate | None = None
    waves: WaveGate | None = None
    lineage: dict[str, Any] | None = None
    label: str | None = None
    """What messages call the rows on disk (default: ``<stage> output``)."""
    restart_discards: Literal["stale", "all"] = "stale"
    """What ``--restart`` discards: rows built from other inputs, or every row (then a rerun asks
    every request again: annotate's remedy after its failure gate, which no setting may have caused)."""
    config: dict[str, Any] | None = None
    manifest_fields: dict[str, Any] = field(default_factory=dict)
    describe: Describe | None = None

    @property
    def requested(self) -> Sampling:
        """What every request asks for."""
        return self.sampling or Sampling.of(self.llm)


@dataclass
class Job:
    """One wave for an executor: its requests cut into shards (request ``k*shard_size`` onwards in
    shard ``k``), the shards with rows to request or journals to fold in, the ids already done and
    the ledger so far."""

    spec: RunSpec
    requests: pd.DataFrame
    shards: list[pd.DataFrame]
    todo: list[int]
    done: set[str]
    ledger: Ledger
    requests_to_go: int | None = None
    """Requests the rows to do will take, when conversations take one a turn (None: one a row)."""

    @property
    def total(self) -> int:
        return len(self.requests)


@dataclass
class Outcome:
    """What an executor did with a job: rows added, the ledger after, why it stopped (if it did),
    whether anything was sent or written, and its own manifest fields."""

    ledger: dict[str, Any]
    new_rows: int = 0
    stop_reason: str | None = None
    changed: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)


class Executor(Protocol):
    """How a run's requests reach the model: online (:mod:`pipeline.llm.online`) or through a Batch API
    (:mod:`pipeline.llm.batch`). The run skeleton owns everything else; an executor holds what lives
    across waves (a cluster, a batch book) between ``__enter__`` and ``__exit__``."""

    def ledger(self, **totals: Any) -> Ledger:
        """A ledger at this executor's prices, starting from ``totals``."""
        ...

    def prepare(self, restart: bool, dry_run: bool) -> None:
        """Check the executor's own state against the run's lineage (``restart``: forget a stale one)."""
        ...

    def in_flight(self) -> set[str]:
        """Row ids sent by an earlier run whose answers are still to be collected."""
        ...

    def estimate(self, estimate: dict[str, Any], done: set[str]) -> dict[str, Any]:
        """The dry run's estimate, with what this executor adds to it."""
        ...

    def execute(self, job: Job) -> Outcome: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...
