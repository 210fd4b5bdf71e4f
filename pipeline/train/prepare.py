"""Everything the loop needs, every error before step 0: check the mixture, budget and inputs; get
the tokenizer; check the lineage (a phase already trained on these inputs is not trained again);
load the model and the data; resume the optimizer from the latest state; compile and wrap for DDP.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import EmptySourceError, PipelineError, TrainError, first_line
from pipeline.io import check_writable, write_json
from pipeline.progress import interactive, note
from pipeline.rundir import TRAIN_SUMMARY, RunDir, state_dir, state_lineage
from pipeline.sources import check_source
from pipeline.train.checkpoint import (
    load_latest,
    phase_fingerprint,
    reuse_or_discard,
)
from pipeline.train.config import PhaseConfig, TrainConfig
from pipeline.train.data import MixtureSampler, packed_source
from pipeline.train.distributed import Dist, barrier
from pipeline.train.evals import MetricsLog, evaluate
from pipeline.train.model import build_model, flops_per_token, model_shape, peak_flops
from pipeline.train.plan import PhasePlan
from pipeline.train.sft import conversation_parser, sft_data
from pipeline.train.tokenizer import check_vocab_size, ensure_tokenizer, token_bytes, tokenizer_id


@dataclass
class Run:
    """One run of the loop, built by :func:`prepare`: what it trains, on what, with what, from where."""

    t: TrainConfig
    run_dir: Path
    plan: PhasePlan
    dist: Dist
    tok: Any
    tok_id: str
    """:func:`tokenizer_id` of the tokenizer (keys the token-shard cache; in the manifest)."""
    mixture: dict[str, float]
    lineage: dict[str, Any]
    steps: int
    """Steps of the whole schedule."""
    start: int
    """The step resumed from (0 on a fresh start)."""
    stop: int
    """Where this run stops: ``steps``, or ``train.stop_at_step`` when that comes first."""
    tokens_per_step: int
    rows_per_step: int
    model: torch.nn.Module
    fwd: torch.nn.Module
    """What the forward pass calls: the model, compiled on CUDA and wrapped in DDP under torchrun."""
    optimizer: torch.optim.Optimizer
    data: PhaseData
    autocast: Callable[[], contextlib.AbstractContextManager]
    log: MetricsLog
    bytes_table: np.ndarray
    """UTF-8 bytes of every token id: the denominator of bits per byte."""
    flops_per_token: float
    peak: float | None
    elapsed_before: float
    """Training seconds of the runs before the resumed state."""
    train_time: float = 0.0
    """Training seconds of this run."""

    @property
    def state_dir(self) -> Path:
        return state_dir(self.plan.out_dir)

    def validate(self, step: int) -> dict[str, dict[str, float]]:
        """Validation loss and bits per byte of every eval domain, logged at ``step``."""
        results = evaluate(self.model, self.data.eval_sets, self.bytes_table, self.dist.device,
                           self.plan.schedule.batch_size, self.tok.pad_token_id, self.autocast)
        for domain, r in results.items():
            self.log.log({"kind": "eval", "step": step, "tokens": step * self.tokens_per_step, "domain": domain, **r})
        return results


def prepare(t: TrainConfig, run_dir: Path, plan: PhasePlan, d: Dist, restart: bool) -> Run | dict[str, Any]:
    """Check the mixture, budget and inputs; get the tokenizer; check the lineage (and return the
    phase's summary instead when it is already trained on exactly these inputs); then load the
    model and data, resume the optimizer from the latest state, and compile / wrap for DDP."""
    p = plan.schedule
    mixture = check_mixture(t, plan.mixture_key, p.mixture)
    tokens_per_step = p.batch_size * p.grad_accum * t.seq_len * d.world
    steps = p.tokens // tokens_per_step
    if steps < 1:
        raise TrainError(f"config key '{plan.key}.tokens': budget {p.tokens} is less than one step of "
                         f"{tokens_per_step} tokens (batch_size x grad_accum x seq_len x world_size)")
    check_inputs(t, run_dir, plan, mixture)
    run = RunDir(run_dir)
    check_writable(TrainError, plan.out_dir, run.tokens, *([run.tokenizer] if plan.init_from is None else []))
    tok = phase_tokenizer(t, run_dir, plan, d, restart)
    lineage = phase_fingerprint(t, run_dir, plan, mixture, d.world)
    finished = reuse_or_discard(plan, lineage, restart, d)
    if finished is not None:
        return finished
    model = load_model(t, plan, tok)
    tok_id = tokenizer_id(RunDir(run_dir).tokenizer if plan.init_from is None else plan.init_from)
    rows_per_step = p.batch_size * p.grad_accum * d.world
    data = load_data(t, run_dir, plan, tok, tok_id, steps * rows_per_step, mixture) if d.main else None
    barrier(d)  # rank 0 built the token shards; the others read the cache
    if data is None:
        data = load_data(t, run_dir, plan, tok, tok_id, steps * rows_per_step, mixture)

    model.to(d.device)
    optimizer = adamw(model, t, p, d.device)
    state = load_latest(state_dir(plan.out_dir), model, optimizer)
    if d.main:  # beside the states it vouches for, before the first of them is saved
        write_json({"lineage": lineage}, state_lineage(plan.out_dir))
    start = state["step"] if state else 0
    return Run(
        t=t, run_dir=run_dir, plan=plan, dist=d, tok=tok, tok_id=tok_id, mixture=mixture, lineage=lineage,
        steps=steps, start=start, stop=min(steps, t.stop_at_step) if t.stop_at_step else steps,
        tokens_per_step=tokens_per_step, rows_per_step=rows_per_step,
        model=model, fwd=forward_fn(model, t, d), optimizer=optimizer, data=data,
        autocast=autocast_for(d.device), log=MetricsLog(plan.out_dir, start, enabled=d.main),
        bytes_table=token_bytes(tok), flops_per_token=flops_per_token(model, t.seq_len),
        peak=peak_flops(d.device), elapsed_before=state.get("elapsed_s", 0.0) if state else 0.0,
    )


def check_mixture(t: TrainConfig, key: str, mixture: dict[str, float]) -> dict[str, float]:
    """Known sources, finite non-negative weights summing to a positive number; zero weights dropped."""
    if not mixture:
        raise TrainError(f"config key '{key}': the mixture is empty")
    for name, w in mixture.items():
        if name not in t.sources:
            raise TrainError(f"config key '{key}.{name}': unknown source (known: {', '.join(t.sources)})")
        if not math.isfinite(w) or w < 0:
            raise TrainError(f"config key '{key}.{name}': weight {w} must be a finite number >= 0")
    if sum(mixture.values()) <= 0:
        raise TrainError(f"config key '{key}': weights {mixture} must sum to a positive number")
    return {n: w for n, w in mixture.items() if w > 0}


def check_inputs(t: TrainConfig, run_dir: Path, plan: PhasePlan, mixture: dict[str, float]) -> None:
    """The cheap checks, before a tokenizer is trained, a document read or a stale phase discarded:
    sources with files that hold the columns they are read by, a vocab that fits the special tokens,
    a sequence length the model can take, a previous phase, an importable SFT parser."""
    for name in mixture:
        check_source(name, t.sources[name], run_dir)
    if plan.sft:
        conversation_parser(t.sft.parser)
    if plan.init_from is None:
        if not t.tokenizer.pretrained:
            check_vocab_size(t.tokenizer.vocab_size)
        max_pos = model_shape(t.model)["max_position_embeddings"]
    else:
        if not (plan.init_from / TRAIN_SUMMARY).exists():  # written after the final weights
            previous = "2" if plan.sft else "1"
            raise TrainError(f"{plan.init_from}: no final checkpoint to start {plan.name} from; run "
                             f"`textbook train --phase {previous}` first")
        from transformers import AutoConfig

        max_pos = AutoConfig.from_pretrained(plan.init_from).max_position_embeddings
    if t.seq_len > max_pos:
        raise TrainError(f"config key 'train.seq_len': {t.seq_len} is above the model's maximum "
                         f"max_position_embeddings={max_pos}")


def phase_tokenizer(t: TrainConfig, run_dir: Path, plan: PhasePlan, d: Dist, restart: bool):
    """Phase 1: RUN_DIR/tokenizer/ (trained unless it exists); later phases: the previous phase's,
    saved with its weights."""
    if plan.init_from is None:
        return ensure_tokenizer(t, run_dir, plan.seed, d, restart, plan.config)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(plan.init_from)


def load_model(t: TrainConfig, plan: PhasePlan, tok):
    """Phase 1: a fresh model from config; later phases: the previous phase's final weights."""
    if plan.init_from is None:
        return build_model(t.model, tok, plan.seed)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(plan.init_from, attn_implementation="sdpa", dtype=torch.float32)
    if model.config.vocab_size < len(tok):
        raise TrainError(f"{plan.init_from}: vocab {model.config.vocab_size} is smaller than the tokenizer's "
                         f"{len(tok)}; it was trained with another RUN_DIR/tokenizer")
    return model


@dataclass
class PhaseData:
    sampler: MixtureSampler
    masks: MixtureSampler | None
    eval_sets: dict[str, tuple[np.ndarray, np.ndarray | None]]
    sources: dict[str, dict]


def load_data(t: TrainConfig, run_dir: Path, plan: PhasePlan, tok, tok_id: str, total_rows: int,
              mixture: dict[str, float]) -> PhaseData:
    """The phase's mixture sampler (and SFT's loss masks), its eval sets, and what each source gave."""
    common = dict(run_dir=run_dir, tok=tok, tokenizer_id=tok_id, seq_len=t.seq_len, val_fraction=t.val_fraction)
    eval_sets: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    if plan.sft:
        name = t.sft.source
        arrays, info = sft_data(t.sft, t.sources[name], **common)
        sampler = MixtureSampler({name: arrays["train"]}, {name: 1.0}, total_rows, plan.seed)
        masks = MixtureSampler({name: arrays["train_mask"]}, {name: 1.0}, total_rows, plan.seed)
        if len(arrays["val"]):
            eval_sets["sft_assistant"] = (arrays["val"][: t.eval_sequences], arrays["val_mask"][: t.eval_sequences])
        sources = {name: info}
    else:
        packed = {n: packed_source(n, t.sources[n], **common) for n in mixture}
        for n, p in packed.items():
            if len(p.train) == 0:
                raise EmptySourceError(f"train.sources.{n}: {p.info['tokens']} tokens is less than one sequence of "
                                       f"train.seq_len + 1 = {t.seq_len + 1}")
        sampler = MixtureSampler({n: p.train for n, p in packed.items()}, mixture, total_rows, plan.seed)
        masks = None
        sources = {n: p.info for n, p in packed.items()}
    for domain, source in t.eval_domains.items():
        spec = t.sources.get(source)
        if spec is None or not spec.paths:
            continue
        try:
            p = packed_source(source, spec, **common)
        except PipelineError as e:
            note(f"eval domain {domain!r} skipped: {first_line(e)}")
            continue
        if len(p.val):
            eval_sets[domain] = (p.val[: t.eval_sequences], None)
    return PhaseData(sampler, masks, eval_sets, sources)


def adamw(model: torch.nn.Module, t: TrainConfig, p: PhaseConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (not on norms and biases); fused on CUDA."""
    decay = [q for q in model.parameters() if q.ndim >= 2]
    no_decay = [q for q in model.parameters() if q.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=p.lr, betas=t.betas, fused=device.type == "cuda")


def forward_fn(model: torch.nn.Module, t: TrainConfig, d: Dist) -> torch.nn.Module:
    """The model as the training step calls it: ``torch.compile`` on CUDA (``train.compile``), then
    DistributedDataParallel when launched by torchrun."""
    fwd = model
    if d.device.type == "cuda" and t.compile:
        fwd = torch.compile(model)
    if d.world > 1 or d.initialized_here:
        from torch.nn.parallel import DistributedDataParallel

        fwd = DistributedDataParallel(fwd, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    return fwd


def autocast_for(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA; nothing on CPU."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


@contextlib.contextmanager
def library_bars_off():
    """transformers' own bars (loading, writing weights) redraw every frame into a log file: off
    unless a person watches a terminal."""
    from transformers.utils import logging as hf_logging

    if interactive() or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
