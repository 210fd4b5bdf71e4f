"""The `train` section: tokenizer, model, sources, phases with their mixtures, checkpoints and evals.

A *source* is a set of Parquet paths (``{run_dir}`` is substituted) with optional row conditions
(YAML key ``filters``); a *phase* draws fixed-length token sequences from its sources by weight until
its token budget is spent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from pipeline.rundir import (
    CONVERSATION,
    EDU_SCORE,
    FLAGS,
    GENERATED_SOURCE,
    SHARD_GLOB,
    SOURCE,
    TEMPLATE,
    UNUSABLE_FLAGS,
    RunDir,
)
from pipeline.settings import Section
from pipeline.sources import RowCondition, SourceConfig


class TokenizerConfig(Section):
    pretrained: str | None = None
    """A Hub id or local path of a tokenizer to use instead of training one."""
    vocab_size: int = 8192
    sample_docs: int = 20_000
    """Documents sampled from the phase mixtures to train the BPE."""


class ModelConfig(Section):
    preset: Literal["tiny", "small", "100m"] = "tiny"
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int | None = None


class PhaseConfig(Section):
    mixture: dict[str, float]
    """Source name -> sampling weight (normalised; must sum to a positive number)."""
    tokens: int = 200_000
    """Token budget: steps = tokens // (batch_size * grad_accum * seq_len * world_size)."""
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_fraction: float = Field(default=0.2, gt=0, le=1)
    """WSD only: the share of steps spent decaying to min_lr at the end."""
    batch_size: int = Field(default=8, ge=1)
    """Sequences per micro-batch per process."""
    grad_accum: int = Field(default=1, ge=1)


class Phase1Config(PhaseConfig):
    """Phase 1: mostly (filtered) web text, from a fresh model."""

    mixture: dict[str, float] = {"web": 1.0}


class Phase2Config(PhaseConfig):
    """Phase 2: top-edu web plus synthetic textbooks, from phase 1's final weights."""

    mixture: dict[str, float] = {"web_top_edu": 0.5, "synthetic": 0.5}
    lr: float = 1e-3
    warmup_steps: int = 5
    schedule: Literal["cosine", "wsd"] = "wsd"


def _src(path: str, *conditions: dict[str, Any]) -> SourceConfig:
    return SourceConfig(paths=[path], filters=[RowCondition(**c) for c in conditions])


_RUN = RunDir("{run_dir}")  # the default paths keep ``{run_dir}`` for source_files to substitute
_FILTERED = str(_RUN.filtered / SHARD_GLOB)  # "{run_dir}/filtered/part-*.parquet"
_GENERATED = str(_RUN.generated / SHARD_GLOB)  # "{run_dir}/generated/part-*.parquet"
_NOT_GENERATED = {"column": SOURCE, "op": "!=", "value": GENERATED_SOURCE}
_NOT_CHAT = {"column": TEMPLATE, "op": "!=", "value": CONVERSATION}
# the shipped rephrase families (prompts/rephrase_*.j2): rephrased web text is a source of its own
_REPHRASE_TEMPLATES = ["rephrase_wikipedia", "rephrase_qa", "rephrase_tutorial", "rephrase_faq", "rephrase_table",
                       "rephrase_knowledge_list", "rephrase_math"]
_NOT_REPHRASED = {"column": TEMPLATE, "op": "not in", "value": _REPHRASE_TEMPLATES}
_USABLE = {"column": FLAGS, "op": "excludes", "value": list(UNUSABLE_FLAGS)}  # no cut-off, empty or looping rows


def _default_sources() -> dict[str, SourceConfig]:
    return {
        "web": _src(_FILTERED, _NOT_GENERATED),
        "web_top_edu": _src(_FILTERED, _NOT_GENERATED, {"column": EDU_SCORE, "op": ">=", "percentile": 50}),
        "synthetic": _src(_GENERATED, _NOT_CHAT, _NOT_REPHRASED, _USABLE),
        "rephrased": _src(_GENERATED, {"column": TEMPLATE, "op": "in", "value": _REPHRASE_TEMPLATES}, _USABLE),
        "textbook": _src(_GENERATED, {"column": TEMPLATE, "op": "in", "value": ["textbook", "exercises"]}, _USABLE),
        "chat": _src(_GENERATED, {"column": TEMPLATE, "op": "==", "value": CONVERSATION}, _USABLE),
        "held_out": SourceConfig(),
    }


class SFTConfig(Section):
    source: str = "chat"
    parser: str = "pipeline.generate.conversation:parse_conversation"
    """``module:function`` turning a conversation text into [{role, content}], for rows without a
    ``messages`` column (read directly when present); the default reads Student:/Teacher: turns."""
    tokens: int = 50_000
    lr: float = 5e-4
    min_lr_ratio: float = 0.0
    warmup_steps: int = 5
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)


# The synthetic-share sweep: 0-75% synthetic in phase 2 (FinePhrase found 60-80% best for rephrased web).
SWEEPS: dict[str, dict[str, dict[str, float]]] = {
    "synthetic_share": {f"synthetic_{p}": {"web_top_edu": (100 - p) / 100, **({"synthetic": p / 100} if p else {})}
                        for p in (0, 25, 50, 75)},
}


class CompareConfig(Section):
    arms: dict[str, dict[str, float]] = {
        "with_synthetic": {"web_top_edu": 0.5, "synthetic": 0.5},
        "web_only": {"web_top_edu": 1.0},
    }
    """Arm name -> phase-2 mixture; every arm starts from checkpoints/phase1 with phase2.tokens. The
    first arm is the baseline."""
    sweep: Literal["synthetic_share"] | None = None
    """A preset of arms instead of ``arms``: synthetic_share trains 0, 25, 50 and 75% synthetic."""
    seeds: int = Field(default=2, ge=1)
    """Seeds per arm (data order of the phase-2 mixture); differences are judged against their spread."""

    def resolved_arms(self) -> dict[str, dict[str, float]]:
        return SWEEPS[self.sweep] if self.sweep else self.arms


class TrainConfig(Section):
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    seq_len: int = Field(default=256, ge=8)
    sources: dict[str, SourceConfig] = Field(default_factory=_default_sources)
    phase1: Phase1Config = Phase1Config()
    phase2: Phase2Config = Phase2Config()
    sft: SFTConfig = SFTConfig()
    compare: CompareConfig = CompareConfig()
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    val_fraction: float = Field(default=0.05, gt=0, lt=1)
    """Share of each source's documents (by hashed id) held out for validation, never trained on."""
    eval_domains: dict[str, str] = {"web": "web", "textbook": "textbook", "chat": "chat",
                                    "held_out": "held_out"}
    """Eval domain -> source; a source without paths (``held_out`` by default) is skipped, one whose
    files or documents are missing is skipped with a warning."""
    eval_every: int = 50
    eval_sequences: int = 16
    """Validation sequences per domain."""
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    stop_at_step: int | None = None
    """Stop (after checkpointing) at this step without ending the schedule: for time-limited jobs."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = True
    """torch.compile on CUDA (never on CPU)."""
    log_every: int = 1

    @field_validator("sources", mode="before")
    @classmethod
    def _merge_default_sources(cls, given: Any) -> Any:
        """A partial override (``train.sources.web.paths=[...]``) keeps the other sources and keys."""
        if not isinstance(given, dict):
            return given
        merged: dict[str, Any] = {k: v.model_dump() for k, v in _default_sources().items()}
        for name, spec in given.items():
            if isinstance(spec, dict) and name in merged:
                merged[name] = {**merged[name], **spec}
            else:
                merged[name] = spec
        return merged
