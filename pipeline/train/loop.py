"""`textbook train --phase 1|2|sft`: one explicit PyTorch loop for pretraining and SFT (nanochat style).

    prepare(cfg, plan) -> Run  check the config and inputs, get the tokenizer, token shards and model,
                               resume the optimizer from the latest state (every error before step 0)
    train_loop(run)            steps of grad-accumulated AdamW under a warmup+cosine/WSD schedule,
                               periodic eval, resumable states
    finish(run) -> summary     save_pretrained + metrics + loss.png + manifest + train_summary.json

Phase 2 starts from phase 1's final weights and SFT from phase 2's, each with its own schedule.
Under ``torchrun --nproc_per_node N`` the same code runs with DDP; each rank reads its own slice of
the deterministic mixture plan.

Lineage: the tokenizer and every phase record a fingerprint (the settings that shape them, the
content digests of the shards their sources read, the manifests of the stages upstream and of the
previous phase) in their ``manifest.json`` and, for a phase, beside its resumable state. A rerun
resumes or reuses them only when the fingerprint still matches; otherwise it stops with a one-line
:class:`~pipeline.lineage.LineageError`, or with ``restart`` discards them and starts over.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.config import Config, public_dict
from pipeline.errors import EmptySourceError, PipelineError, TrainError
from pipeline.io import (
    atomic_dir,
    build_manifest,
    check_writable,
    current_umask,
    read_json,
    stable_hash,
    write_json,
)
from pipeline.lineage import (
    check_resume,
    file_digests,
    fingerprint,
    manifest_ref,
    read_fingerprint,
    relative_name,
)
from pipeline.progress import interactive, progress
from pipeline.rundir import (
    LOSS_FIGURE,
    MANIFEST,
    METRICS,
    PHASES,
    TEXT,
    TRAIN_SUMMARY,
    RunDir,
    manifest_path,
)
from pipeline.train.checkpoint import LINEAGE, STATE, list_states, load_latest, save_state
from pipeline.train.config import PhaseConfig, TrainConfig
from pipeline.train.data import MixtureSampler, check_source, packed_source, read_source, source_files
from pipeline.train.evals import (
    IGNORE,
    MetricsLog,
    batch_targets,
    evaluate,
    plot_losses,
    read_metrics,
    token_losses,
)
from pipeline.train.model import build_model, flops_per_token, model_shape, peak_flops
from pipeline.train.sft import conversation_parser, sft_data
from pipeline.train.tokenizer import IM_END, check_vocab_size, load_pretrained, token_bytes, train_bpe

PHASE_ARGS = dict(zip(("1", "2", "sft"), PHASES, strict=True))
"""``textbook train --phase`` -> the phase's name (and folder under checkpoints/)."""


@dataclass
class PhasePlan:
    """What one run of the loop trains: where from, on what mixture, with which schedule, to where."""

    name: str
    out_dir: Path
    init_from: Path | None
    schedule: PhaseConfig
    sft: bool = False
    key: str = ""
    """Config key of the schedule (default ``train.<name>``), for messages and the fingerprint."""
    mixture_key: str = ""
    """Config key of the mixture (default ``<key>.mixture``)."""

    def __post_init__(self) -> None:
        self.key = self.key or ("train.sft" if self.sft else f"train.{self.name}")
        self.mixture_key = self.mixture_key or ("train.sft.source" if self.sft else f"{self.key}.mixture")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def train(cfg: Config, phase: str, restart: bool = False) -> int:
    """CLI entry: run ``phase`` ("1", "2" or "sft") into RUN_DIR/checkpoints/<phase>/."""
    if phase not in PHASE_ARGS:
        raise TrainError(f"unknown phase {phase!r} (expected 1, 2 or sft)")
    plan = phase_plan(cfg, phase)
    summary = run_phase(cfg, plan, restart)
    if summary.get("stopped_early"):
        print(f"stopped at step {summary['steps_done']}/{summary['steps']} (train.stop_at_step); "
              "rerun to resume from the latest checkpoint")
    elif "tokens" in summary:
        print(summary_text(summary, plan.out_dir))
    return 0


def summary_text(summary: dict[str, Any], out_dir: Path) -> str:
    """The end-of-run screen: where the checkpoint is, tokens and their shares, time, validation."""
    shares = ", ".join(f"{n} {100 * v:.1f}%" for n, v in (summary.get("token_shares") or {}).items())
    seconds = summary.get("train_time_s") or 0.0
    took = f"{seconds:.1f} s" if seconds < 60 else "{} min {:02d} s".format(*divmod(round(seconds), 60))
    lines = [f"{summary['phase']}: {summary['steps']} steps, {summary['tokens']:,} tokens ({shares}) in {took}"
             + (" (already trained on these inputs: nothing to do)" if summary.get("reused") else ""),
             f"  checkpoint:  {out_dir}  (AutoModelForCausalLM / AutoTokenizer.from_pretrained)"]
    for domain, v in (summary.get("final_val") or {}).items():
        lines.append(f"  val {domain + ':':<14} loss {v['loss']:.4f}  bpb {v['bpb']:.4f}")
    return "\n".join(lines)


def phase_plan(cfg: Config, phase: str) -> PhasePlan:
    t, run = cfg.train, RunDir(cfg.run_dir)
    phase1, phase2, sft = PHASES
    if phase == "1":
        return PhasePlan(phase1, run.checkpoint(phase1), None, t.phase1)
    if phase == "2":
        return PhasePlan(phase2, run.checkpoint(phase2), run.checkpoint(phase1), t.phase2)
    s = t.sft
    schedule = PhaseConfig(mixture={s.source: 1.0}, tokens=s.tokens, lr=s.lr, min_lr_ratio=s.min_lr_ratio,
                           warmup_steps=s.warmup_steps, batch_size=s.batch_size, grad_accum=s.grad_accum)
    return PhasePlan(sft, run.checkpoint(sft), run.checkpoint(phase2), schedule, sft=True)


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


# --- setup ------------------------------------------------------------------------------------

def init_distributed(device_choice: str) -> Dist:
    """DDP when launched by torchrun (RANK/WORLD_SIZE set): nccl on CUDA, gloo on CPU."""
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise TrainError("config key 'train.device': cuda requested but no GPU is visible")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
        here = True
    return Dist(rank, world, device, here)


def barrier(d: Dist) -> None:
    if d.world > 1 or d.initialized_here:
        torch.distributed.barrier()


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


def ensure_tokenizer(cfg: Config, d: Dist, restart: bool = False):
    """RUN_DIR/tokenizer/, trained (rank 0) on a sample of the phase mixtures unless it exists.

    Its ``manifest.json`` holds the tokenizer's lineage (``train.tokenizer``, the sample's sources
    and the digests of their shards); an existing tokenizer is reused only when that still matches,
    else LineageError, or with ``restart`` it is rebuilt. A tokenizer put there by hand (no
    manifest) is the user's to vouch for.
    """
    from transformers import AutoTokenizer

    t, folder = cfg.train, RunDir(cfg.run_dir).tokenizer
    current = tokenizer_fingerprint(cfg)
    manifest = manifest_path(folder)
    reuse = (folder / "tokenizer_config.json").exists() and (
        not manifest.exists() or check_resume("the tokenizer", read_fingerprint(manifest), current, restart, folder))
    barrier(d)  # every rank has read the old manifest before rank 0 replaces the folder
    if not reuse and d.main:
        if t.tokenizer.pretrained:
            tok = load_pretrained(t.tokenizer.pretrained)
        else:
            tok = train_bpe(tokenizer_sample(cfg), t.tokenizer.vocab_size)
        with atomic_dir(folder) as tmp:  # a crash leaves the old folder or none, never half of one
            tok.save_pretrained(tmp)
            write_json(build_manifest("tokenizer", public_dict(cfg), tokenizer=t.tokenizer.model_dump(),
                                      vocab=len(tok), lineage=current), manifest_path(tmp))
    barrier(d)
    return AutoTokenizer.from_pretrained(folder)


def sample_sources(t: TrainConfig) -> list[str]:
    """The sources the tokenizer sample reads: every phase's, phase 1's first."""
    names = dict.fromkeys([*t.phase1.mixture, *t.phase2.mixture, t.sft.source])
    return [n for n in names if n in t.sources]


def tokenizer_fingerprint(cfg: Config) -> dict[str, Any]:
    """What the tokenizer is built from: its settings and, for a trained BPE, the seed, the sample's
    source definitions and the content digests of their files (a source without files is skipped
    by the sample, so it is left out here too)."""
    t = cfg.train
    if t.tokenizer.pretrained:
        return fingerprint({"train.tokenizer": t.tokenizer.model_dump()})
    names = sample_sources(t)
    files: set[str] = set()
    for name in names:
        try:
            files.update(source_files(name, t.sources[name], cfg.run_dir))
        except PipelineError:
            continue
    config = {"seed": cfg.seed, "train.tokenizer": t.tokenizer.model_dump(),
              "train.sources": {n: t.sources[n].model_dump() for n in names}}
    return fingerprint(config, file_digests(files, cfg.run_dir), source_parents(files, cfg.run_dir))


def source_parents(files: Iterable[str], run_dir: Path) -> dict[str, dict[str, str]]:
    """``{folder: manifest_ref}`` of the stage manifests (filtered/, generated/, ...) beside the files read."""
    parents: dict[str, dict[str, str]] = {}
    for folder in sorted({Path(f).parent for f in files}):
        ref = manifest_ref(manifest_path(folder), run_dir)
        if ref is not None:
            parents[relative_name(folder, run_dir)] = ref
    return parents


def tokenizer_sample(cfg: Config) -> list[str]:
    """Up to ``sample_docs`` documents, spread evenly over the sources of every phase (seeded)."""
    t = cfg.train
    names = list(dict.fromkeys([*t.phase1.mixture, *t.phase2.mixture, t.sft.source]))
    per_source = max(1, t.tokenizer.sample_docs // len(names))
    texts: list[str] = []
    for i, name in enumerate(names):
        try:
            docs = read_source(name, t.sources[name], cfg.run_dir)
        except (PipelineError, KeyError) as e:
            if name in t.phase1.mixture:
                raise
            note(f"tokenizer sample skips source {name!r}: {_first_line(e)}")
            continue
        rng = np.random.default_rng([cfg.seed, i])
        pick = rng.permutation(len(docs))[:per_source]
        texts.extend(docs[TEXT].iloc[np.sort(pick)].tolist())
    return texts


def note(message: str) -> None:
    """A one-line notice on stderr (not a Python warning with its source line)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def _first_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return (text.splitlines() or [type(e).__name__])[0]


def tokenizer_id(folder: Path) -> str:
    """A digest of the tokenizer's content (not its mtime), so copies in later phases share caches."""
    path = folder / "tokenizer.json"
    if path.exists():
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return stable_hash(sorted(os.listdir(folder)))


def check_inputs(cfg: Config, plan: PhasePlan, mixture: dict[str, float]) -> None:
    """The cheap checks, before a tokenizer is trained, a document read or a stale phase discarded:
    sources with files that hold the columns they are read by, a vocab that fits the special tokens,
    a sequence length the model can take, a previous phase, an importable SFT parser."""
    t = cfg.train
    for name in mixture:
        check_source(name, t.sources[name], cfg.run_dir)
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


def phase_fingerprint(cfg: Config, plan: PhasePlan, mixture: dict[str, float], world: int) -> dict[str, Any]:
    """What a phase's weights are a function of: its schedule and mixture, the sources' definitions
    and the digests of every shard they read, the seed, sequence length, optimizer settings and
    world size (it sets the steps and each rank's rows), the model shape for phase 1; and as
    parents the manifests of the stages that wrote those shards, of the tokenizer and of the
    phase it starts from (so a retrained phase 1 stops phase 2 from resuming)."""
    t, run_dir = cfg.train, cfg.run_dir
    config: dict[str, Any] = {
        "seed": cfg.seed, plan.key: plan.schedule.model_dump(exclude={"mixture"}), plan.mixture_key: mixture,
        "train.sources": {n: t.sources[n].model_dump() for n in mixture}, "train.seq_len": t.seq_len,
        "train.val_fraction": t.val_fraction, "train.weight_decay": t.weight_decay, "train.betas": list(t.betas),
        "train.grad_clip": t.grad_clip, "world_size": world,
    }
    if plan.sft:
        config["train.sft.parser"] = t.sft.parser
    files = sorted({f for n in mixture for f in source_files(n, t.sources[n], run_dir)})
    parents: dict[str, Any] = source_parents(files, run_dir)
    if plan.init_from is None:
        config["train.model"] = t.model.model_dump()
        tokenizer = RunDir(run_dir).tokenizer
        parents[tokenizer.name] = manifest_ref(manifest_path(tokenizer), run_dir)
    else:
        parents[relative_name(plan.init_from, run_dir)] = manifest_ref(manifest_path(plan.init_from), run_dir)
    return fingerprint(config, file_digests(files, run_dir), {k: v for k, v in parents.items() if v is not None})


def reuse_or_discard(plan: PhasePlan, current: dict[str, Any], restart: bool, d: Dist) -> dict[str, Any] | None:
    """Check the phase's final checkpoint and saved state against ``current``.

    Returns the final summary when the phase is already trained on exactly these inputs (nothing
    to do), None when training should start or resume. A mismatch raises LineageError, or with
    ``restart`` deletes the phase folder (state and final outputs) so training starts from scratch.
    """
    summary_path = plan.out_dir / TRAIN_SUMMARY  # written last: the phase is complete
    state_dir = plan.out_dir / STATE
    fresh = True
    if summary_path.exists():
        fresh = check_resume(f"the {plan.name} checkpoint", read_fingerprint(manifest_path(plan.out_dir)),
                             current, restart, plan.out_dir)
    if fresh and list_states(state_dir):
        fresh = check_resume(f"the saved {plan.name} training state", read_fingerprint(state_dir / LINEAGE),
                             current, restart, state_dir)
    if not fresh:
        barrier(d)  # every rank has checked before rank 0 deletes
        if d.main:
            shutil.rmtree(plan.out_dir)
            note(f"{plan.out_dir}: discarded (built from other inputs; --restart); training from scratch")
        barrier(d)
        return None
    if summary_path.exists():
        return {**read_json(summary_path), "reused": True}
    return None


def load_model(cfg: Config, plan: PhasePlan, tok):
    """Phase 1: a fresh model from config; later phases: the previous phase's final weights."""
    if plan.init_from is None:
        return build_model(cfg.train.model, tok, cfg.seed)
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


def load_data(cfg: Config, plan: PhasePlan, tok, tok_id: str, total_rows: int, mixture: dict[str, float]
              ) -> PhaseData:
    t = cfg.train
    common = dict(run_dir=cfg.run_dir, tok=tok, tokenizer_id=tok_id, seq_len=t.seq_len, val_fraction=t.val_fraction)
    eval_sets: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    if plan.sft:
        name = t.sft.source
        arrays, info = sft_data(t.sft, t.sources[name], **common)
        sampler = MixtureSampler({name: arrays["train"]}, {name: 1.0}, total_rows, cfg.seed)
        masks = MixtureSampler({name: arrays["train_mask"]}, {name: 1.0}, total_rows, cfg.seed)
        if len(arrays["val"]):
            eval_sets["sft_assistant"] = (arrays["val"][: t.eval_sequences], arrays["val_mask"][: t.eval_sequences])
        sources = {name: info}
    else:
        packed = {n: packed_source(n, t.sources[n], **common) for n in mixture}
        for n, p in packed.items():
            if len(p.train) == 0:
                raise EmptySourceError(f"train.sources.{n}: {p.info['tokens']} tokens is less than one sequence of "
                                 f"train.seq_len + 1 = {t.seq_len + 1}")
        sampler = MixtureSampler({n: p.train for n, p in packed.items()}, mixture, total_rows, cfg.seed)
        masks = None
        sources = {n: p.info for n, p in packed.items()}
    for domain, source in t.eval_domains.items():
        spec = t.sources.get(source)
        if spec is None or not spec.paths:
            continue
        try:
            p = packed_source(source, spec, **common)
        except PipelineError as e:
            note(f"eval domain {domain!r} skipped: {_first_line(e)}")
            continue
        if len(p.val):
            eval_sets[domain] = (p.val[: t.eval_sequences], None)
    return PhaseData(sampler, masks, eval_sets, sources)


# --- prepare: everything the loop needs, every error before step 0 ----------------------------

@dataclass
class Run:
    """One run of the loop, built by :func:`prepare`: what it trains, on what, with what, from where."""

    cfg: Config
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
        return self.plan.out_dir / STATE


def run_phase(cfg: Config, plan: PhasePlan, restart: bool = False) -> dict[str, Any]:
    """Train one phase to completion (or ``stop_at_step``), resuming from its latest state when
    that was built from the same inputs (``restart``: discard it when not)."""
    d = init_distributed(cfg.train.device)
    try:
        with library_bars_off():
            run = prepare(cfg, plan, d, restart)
            if not isinstance(run, Run):
                return run  # already trained on exactly these inputs: its summary
            train_loop(run)
            return finish(run)
    finally:
        if d.initialized_here:
            torch.distributed.destroy_process_group()


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


def prepare(cfg: Config, plan: PhasePlan, d: Dist, restart: bool) -> Run | dict[str, Any]:
    """Check the mixture, budget and inputs; get the tokenizer; check the lineage (and return the
    phase's summary instead when it is already trained on exactly these inputs); then load the
    model and data, resume the optimizer from the latest state, and compile / wrap for DDP."""
    t, p = cfg.train, plan.schedule
    mixture = check_mixture(t, plan.mixture_key, p.mixture)
    tokens_per_step = p.batch_size * p.grad_accum * t.seq_len * d.world
    steps = p.tokens // tokens_per_step
    if steps < 1:
        raise TrainError(f"config key '{plan.key}.tokens': budget {p.tokens} is less than one step of "
                         f"{tokens_per_step} tokens (batch_size x grad_accum x seq_len x world_size)")
    check_inputs(cfg, plan, mixture)
    run_dir = RunDir(cfg.run_dir)
    check_writable(TrainError, plan.out_dir, run_dir.tokens, *([run_dir.tokenizer] if plan.init_from is None else []))
    tok = phase_tokenizer(cfg, plan, d, restart)
    lineage = phase_fingerprint(cfg, plan, mixture, d.world)
    finished = reuse_or_discard(plan, lineage, restart, d)
    if finished is not None:
        return finished
    model = load_model(cfg, plan, tok)
    tok_id = tokenizer_id(RunDir(cfg.run_dir).tokenizer if plan.init_from is None else plan.init_from)
    rows_per_step = p.batch_size * p.grad_accum * d.world
    data = load_data(cfg, plan, tok, tok_id, steps * rows_per_step, mixture) if d.main else None
    barrier(d)  # rank 0 built the token shards; the others read the cache
    if data is None:
        data = load_data(cfg, plan, tok, tok_id, steps * rows_per_step, mixture)

    model.to(d.device)
    optimizer = adamw(model, t, p, d.device)
    state_dir = plan.out_dir / STATE
    state = load_latest(state_dir, model, optimizer)
    if d.main:  # beside the states it vouches for, before the first of them is saved
        write_json({"lineage": lineage}, state_dir / LINEAGE)
    start = state["step"] if state else 0
    return Run(
        cfg=cfg, plan=plan, dist=d, tok=tok, tok_id=tok_id, mixture=mixture, lineage=lineage,
        steps=steps, start=start, stop=min(steps, t.stop_at_step) if t.stop_at_step else steps,
        tokens_per_step=tokens_per_step, rows_per_step=rows_per_step,
        model=model, fwd=forward_fn(model, t, d), optimizer=optimizer, data=data,
        autocast=autocast_for(d.device), log=MetricsLog(plan.out_dir, start, enabled=d.main),
        bytes_table=token_bytes(tok), flops_per_token=flops_per_token(model, t.seq_len),
        peak=peak_flops(d.device), elapsed_before=state.get("elapsed_s", 0.0) if state else 0.0,
    )


def phase_tokenizer(cfg: Config, plan: PhasePlan, d: Dist, restart: bool):
    """Phase 1: RUN_DIR/tokenizer/ (trained unless it exists); later phases: the previous phase's,
    saved with its weights."""
    if plan.init_from is None:
        return ensure_tokenizer(cfg, d, restart)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(plan.init_from)


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


# --- the loop ---------------------------------------------------------------------------------

def train_loop(run: Run) -> None:
    """Steps ``start .. stop``: an eval every ``eval_every`` steps, one grad-accumulated AdamW step
    at the scheduled learning rate, a metrics row every ``log_every``, a resumable state every
    ``checkpoint_every`` and at the stop."""
    t, p, d = run.cfg.train, run.plan.schedule, run.dist
    run.model.train()
    bar = progress(total=run.stop, initial=run.start, desc=run.plan.name, unit="step", disable=not d.main)
    for step in range(run.start, run.stop):
        if d.main and t.eval_every and step % t.eval_every == 0 and (step > run.start or step == 0):
            run_eval(run, step)
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


def run_eval(run: Run, step: int) -> dict[str, dict[str, float]]:
    """Validation loss and bits per byte of every eval domain, logged at ``step``."""
    results = evaluate(run.model, run.data.eval_sets, run.bytes_table, run.dist.device, run.plan.schedule.batch_size,
                       run.tok.pad_token_id, run.autocast)
    for domain, r in results.items():
        run.log.log({"kind": "eval", "step": step, "tokens": step * run.tokens_per_step, "domain": domain, **r})
    return results


def log_step(run: Run, done: int, loss: float, lr: float, grad_norm: float, seconds: float) -> float:
    """The metrics row of a step (speed and MFU from its wall time); returns its tokens/s."""
    tokens_per_s = run.tokens_per_step / seconds
    run.log.log({"kind": "train", "step": done, "tokens": done * run.tokens_per_step, "loss": loss, "lr": lr,
                 "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
                 "mfu": run.flops_per_token * tokens_per_s / (run.peak * run.dist.world) if run.peak else None})
    return tokens_per_s


# --- finish -----------------------------------------------------------------------------------

def finish(run: Run) -> dict[str, Any]:
    """The run's summary; at the end of the schedule (rank 0) also a final eval, the
    ``save_pretrained`` checkpoint, loss.png, the manifest and train_summary.json (written last:
    it marks the phase complete)."""
    cfg, plan, d = run.cfg, run.plan, run.dist
    done = max(run.start, run.stop)
    summary: dict[str, Any] = {"phase": plan.name, "steps": run.steps, "steps_done": done,
                               "stopped_early": done < run.steps}
    if d.main and done == run.steps:
        final_val = run_eval(run, run.steps) if run.data.eval_sets else {}
        save_final(run)
        metrics = read_metrics(run.log.path)
        plot_losses(metrics, plan.out_dir / LOSS_FIGURE, f"{plan.name} ({cfg.run_dir.name})")
        summary.update(phase_summary(run, metrics, final_val))
        write_json(phase_manifest(run), manifest_path(plan.out_dir))
        write_json(summary, plan.out_dir / TRAIN_SUMMARY)  # last: it marks the phase complete
    run.log.close()
    barrier(d)
    return summary


def save_final(run: Run) -> None:
    """The final weights and tokenizer as ``from_pretrained`` reads them (SFT: stopping at <|im_end|> too)."""
    out, model, tok = run.plan.out_dir, run.model, run.tok
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if run.plan.sft:
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(IM_END)]
        model.generation_config.save_pretrained(out)
    follow_umask(out)


def follow_umask(folder: Path) -> None:
    """Give the files directly in ``folder`` the mode an ordinary ``open`` would: safetensors writes
    ``model.safetensors`` through a 0600 temporary file, whatever the umask."""
    mode = 0o666 & ~current_umask()
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, mode)


def phase_manifest(run: Run) -> dict[str, Any]:
    """The phase's manifest: config, init_from, sources, tokenizer, lineage and the digests of its files."""
    cfg, plan = run.cfg, run.plan
    outputs = file_digests((f for f in plan.out_dir.iterdir() if f.is_file() and f.name not in
                            (MANIFEST, METRICS, TRAIN_SUMMARY)), cfg.run_dir)
    return build_manifest("train", public_dict(cfg), phase=plan.name,
                          init_from=relative_name(plan.init_from, cfg.run_dir) if plan.init_from else None,
                          sources=run.data.sources, tokenizer=run.tok_id, lineage=run.lineage, outputs=outputs)


def phase_summary(run: Run, metrics: list[dict[str, Any]], final_val: dict[str, dict[str, float]]
                  ) -> dict[str, Any]:
    """What the model card reads (train_summary.json): budget, per-source tokens, final per-domain
    val loss/bpb, speed. (``pipeline.hub.checkpoints.phase_summary`` is the card's reading of it.)"""
    t, plan, d, mixture = run.cfg.train, run.plan, run.dist, run.mixture
    rows = run.data.sampler.counts(run.steps * run.rows_per_step)
    train_rows = [r for r in metrics if r["kind"] == "train"]
    # steady-state speed: skip the first steps (allocation, compilation)
    tps = pd.Series([r["tokens_per_s"] for r in train_rows[len(train_rows) // 5:]], dtype=float)
    tokens_per_s = float(tps.median()) if len(tps) else None
    fpt, peak = run.flops_per_token, run.peak
    return {
        "init_from": str(plan.init_from) if plan.init_from else None,
        "tokens": run.steps * run.tokens_per_step,
        "tokens_per_step": run.tokens_per_step,
        "seq_len": t.seq_len,
        "mixture": {n: w / sum(mixture.values()) for n, w in mixture.items()},
        "tokens_per_source": {n: c * t.seq_len for n, c in rows.items()},
        "token_shares": {n: c / max(1, sum(rows.values())) for n, c in rows.items()},
        "sequences_per_source": rows,
        "source_stats": {n: {k: v for k, v in info.items() if k not in ("key", "arrays")}
                         for n, info in run.data.sources.items()},
        "final_train_loss": train_rows[-1]["loss"] if train_rows else None,
        "final_val": final_val,
        "tokens_per_s": tokens_per_s,
        "mfu": fpt * tokens_per_s / (peak * d.world) if peak and tokens_per_s else None,
        "flops_per_token": fpt,
        "parameters": sum(q.numel() for q in run.model.parameters()),
        "device": str(d.device) if d.device.type == "cpu" else torch.cuda.get_device_name(d.device),
        "world_size": d.world,
        "train_time_s": sum(run.tokens_per_step / r["tokens_per_s"] for r in train_rows),
        "checkpoints": [s.name for s in list_states(run.state_dir)],
    }
