"""What one run of the training loop trains (:class:`PhasePlan`): phase 1, phase 2 and SFT from
the ``train`` section, and compare's arms."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.rundir import PHASES, RunDir
from pipeline.train.config import PhaseConfig, TrainConfig

PHASE_ARGS = dict(zip(("1", "2", "sft"), PHASES, strict=True))
"""``textbook train --phase`` -> the phase's name (and folder under checkpoints/)."""


@dataclass
class PhasePlan:
    """What one run of the loop trains: where from, on what mixture, with which schedule and seed, to
    where; and the public config its manifests record."""

    name: str
    out_dir: Path
    init_from: Path | None
    schedule: PhaseConfig
    seed: int = 0
    sft: bool = False
    key: str = ""
    """Config key of the schedule (default ``train.<name>``), for messages and the fingerprint."""
    mixture_key: str = ""
    """Config key of the mixture (default ``<key>.mixture``)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The public config (secrets removed) the tokenizer's and the phase's manifests record."""

    def __post_init__(self) -> None:
        self.key = self.key or ("train.sft" if self.sft else f"train.{self.name}")
        self.mixture_key = self.mixture_key or ("train.sft.source" if self.sft else f"{self.key}.mixture")


def phase_plan(t: TrainConfig, run_dir: Path, phase: str, seed: int, config: dict[str, Any]) -> PhasePlan:
    """The plan of ``phase`` ("1", "2" or "sft"): phase 2 starts from phase 1's weights, SFT from phase 2's."""
    run = RunDir(run_dir)
    phase1, phase2, sft = PHASES
    if phase == "1":
        return PhasePlan(phase1, run.checkpoint(phase1), None, t.phase1, seed, config=config)
    if phase == "2":
        return PhasePlan(phase2, run.checkpoint(phase2), run.checkpoint(phase1), t.phase2, seed, config=config)
    s = t.sft
    schedule = PhaseConfig(mixture={s.source: 1.0}, tokens=s.tokens, lr=s.lr, min_lr_ratio=s.min_lr_ratio,
                           warmup_steps=s.warmup_steps, batch_size=s.batch_size, grad_accum=s.grad_accum)
    return PhasePlan(sft, run.checkpoint(sft), run.checkpoint(phase2), schedule, seed, sft=True, config=config)
