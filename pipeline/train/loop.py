"""`textbook train --phase 1|2|sft`: one explicit PyTorch loop for pretraining and SFT (nanochat style).

    prepare(...) -> Run       check the config and inputs, get the tokenizer, token shards and model,
                              resume the optimizer from the latest state (every error before step 0;
                              pipeline/train/prepare.py)
    train_loop(run)           steps of grad-accumulated AdamW under a warmup+cosine/WSD schedule,
                              periodic eval, resumable states (below)
    finish(run) -> summary    save_pretrained + metrics + loss.png + manifest + train_summary.json
                              (pipeline/train/finish.py)

Phase 2 starts from phase 1's final weights and SFT from phase 2's, each with its own schedule.
Under ``torchrun --nproc_per_node N`` the same code runs with DDP; each rank reads its own slice of
the deterministic mixture plan.

Lineage: the tokenizer (pipeline/train/tokenizer.py) and every phase (pipeline/train/checkpoint.py)
record a fingerprint (the settings that shape them, the content digests of the shards their
sources read, the manifests of the stages upstream and of the previous phase) in their
``manifest.json`` and, for a phase, beside its resumable state. A rerun resumes or reuses them only
when the fingerprint still matches; otherwise it stops with a one-line
:class:`~pipeline.lineage.LineageError`, or with ``restart`` discards them and starts over.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config, public_dict
from pipeline.errors import TrainError
from pipeline.progress import progress
from pipeline.train.checkpoint import save_state
from pipeline.train.config import PhaseConfig, TrainConfig
from pipeline.train.distributed import Dist, barrier, init_distributed
from pipeline.train.evals import IGNORE, batch_targets, token_losses
from pipeline.train.finish import finish, summary_text
from pipeline.train.plan import PHASE_ARGS, PhasePlan, phase_plan
from pipeline.train.prepare import Run, library_bars_off, prepare


def train(cfg: Config, phase: str, restart: bool = False) -> int:
    """CLI entry: run ``phase`` ("1", "2" or "sft") into RUN_DIR/checkpoints/<phase>/."""
    if phase not in PHASE_ARGS:
        raise TrainError(f"unknown phase {phase!r} (expected 1, 2 or sft)")
    plan = phase_plan(cfg.train, cfg.run_dir, phase, cfg.seed, public_dict(cfg))
    summary = run_phase(cfg.train, cfg.run_dir, plan, restart)
    if summary.get("stopped_early"):
        print(f"stopped at step {summary['steps_done']}/{summary['steps']} (train.stop_at_step); "
              "rerun to resume from the latest checkpoint")
    elif "tokens" in summary:
        print(summary_text(summary, plan.out_dir))
    return 0


def run_phase(t: TrainConfig, run_dir: Path, plan: PhasePlan, restart: bool = False) -> dict[str, Any]:
    """Train one phase to completion (or ``stop_at_step``), resuming from its latest state when
    that was built from the same inputs (``restart``: discard it when not)."""
    d = init_distributed(t.device)
    try:
        with library_bars_off():
            run = prepare(t, run_dir, plan, d, restart)
            if not isinstance(run, Run):
                return run  # already trained on exactly these inputs: its summary
            train_loop(run)
            return finish(run)
    finally:
        if d.initialized_here:
            torch.distributed.destroy_process_group()



# --- the loop ---------------------------------------------------------------------------------

def train_loop(run: Run) -> None:
    """Steps ``start .. stop``: an eval every ``eval_every`` steps, one grad-accumulated AdamW step
    at the scheduled learning rate, a metrics row every ``log_every``, a resumable state every
    ``checkpoint_every`` and at the stop."""
    t, p, d = run.t, run.plan.schedule, run.dist
    run.model.train()
    bar = progress(total=run.stop, initial=run.start, desc=run.plan.name, unit="step", disable=not d.main)
    for step in range(run.start, run.stop):
        if d.main and t.eval_every and step % t.eval_every == 0 and (step > run.start or step == 0):
            run.validate(step)
        t0 = time.perf_counter()
        lr = lr_at(step, run.steps, p)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        step_loss, grad_norm = train_step(run.fwd, run.model, run.optimizer, micro_batches(run, step), d,
                                          t.grad_clip, run.autocast)
        if d.world > 1:
            torch.distributed.all_reduce(step_loss)
        loss = float(step_loss) / d.world
        if not math.isfinite(loss):
            raise TrainError(f"{run.plan.name}: loss is {loss} at step {step}; lower {run.plan.key}.lr")
        dt = time.perf_counter() - t0
        run.train_time += dt
        done = step + 1
        if d.main and (done % t.log_every == 0 or done == run.stop):
            tokens_per_s = log_step(run, done, loss, lr, float(grad_norm), dt)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
        bar.update(1)
        if done % t.checkpoint_every == 0 or done == run.stop:
            if d.main:
                save_state(run.state_dir, done, run.model, run.optimizer, done * run.rows_per_step,
                           {"elapsed_s": run.elapsed_before + run.train_time, "steps": run.steps},
                           t.keep_checkpoints)
            barrier(d)
    bar.close()


def micro_batches(run: Run, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) of each micro-batch of ``step`` on this rank, on its device: rank r reads
    its own rows of the mixture plan, so the data position is a function of the step alone."""
    p, d = run.plan.schedule, run.dist
    batches = []
    for m in range(p.grad_accum):
        offset = ((step * p.grad_accum + m) * d.world + d.rank) * p.batch_size
        rows = torch.from_numpy(run.data.sampler.rows(offset, p.batch_size))
        mask = torch.from_numpy(run.data.masks.rows(offset, p.batch_size)).bool() if run.data.masks else None
        inputs, targets = batch_targets(rows, mask, run.tok.pad_token_id)
        batches.append((inputs.to(d.device), targets.to(d.device)))
    return batches


def train_step(fwd, model, optimizer, batches: list[tuple[torch.Tensor, torch.Tensor]], d: Dist, clip: float,
               autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over grad-accumulated micro-batches of (inputs, targets); returns (loss, grad norm).

    The loss is normalised by the targets of the whole step (all micro-batches, all ranks), so a
    micro-batch with no target (an SFT row without assistant tokens) adds zero instead of NaN.
    """
    count = torch.tensor(float(sum(int((tg != IGNORE).sum()) for _, tg in batches)), device=d.device)
    if d.world > 1:
        torch.distributed.all_reduce(count)
    denom = count.clamp(min=1.0) / d.world  # DDP averages gradients over ranks
    step_loss = torch.zeros((), device=d.device)
    for m, (inputs, targets) in enumerate(batches):
        sync = m == len(batches) - 1 or not hasattr(fwd, "no_sync")
        with (contextlib.nullcontext() if sync else fwd.no_sync()), autocast():
            loss = token_losses(fwd, inputs, targets).sum() / denom
        loss.backward()
        step_loss += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm


def log_step(run: Run, done: int, loss: float, lr: float, grad_norm: float, seconds: float) -> float:
    """The metrics row of a step (speed and MFU from its wall time); returns its tokens/s."""
    tokens_per_s = run.tokens_per_step / seconds
    run.log.log({"kind": "train", "step": done, "tokens": done * run.tokens_per_step, "loss": loss, "lr": lr,
                 "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
                 "mfu": run.flops_per_token * tokens_per_s / (run.peak * run.dist.world) if run.peak else None})
    return tokens_per_s


def lr_at(step: int, total: int, p: PhaseConfig) -> float:
    """Linear warmup, then cosine to ``min_lr_ratio * lr`` or warmup-stable-decay (linear decay tail)."""
    low = p.lr * p.min_lr_ratio
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    if p.schedule == "wsd":
        decay_start = total - max(1, int(round(p.decay_fraction * total)))
        if step < decay_start:
            return p.lr
        frac = (step - decay_start + 1) / max(1, total - decay_start)
        return p.lr + (low - p.lr) * frac
    progress = (step - p.warmup_steps) / max(1, total - p.warmup_steps)
    return low + (p.lr - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
