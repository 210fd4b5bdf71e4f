"""`textbook train --phase 1|2|sft`: one explicit PyTorch loop for pretraining and SFT (nanochat style).

    prepare (validate config, tokenizer, token shards, model; every error before step 0)
      -> resume from the latest state -> steps of grad-accumulated AdamW under a warmup+cosine/WSD
      schedule -> periodic eval + checkpoints -> save_pretrained + metrics + loss.png + summary.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.config import Config, public_dict
from pipeline.errors import EmptySourceError, PipelineError, TrainError
from pipeline.io import atomic_dir, build_manifest, current_umask, read_json, stable_hash, write_json
from pipeline.lineage import (
    check_resume,
    file_digests,
    fingerprint,
    manifest_ref,
    read_fingerprint,
    relative_name,
)
from pipeline.progress import interactive, progress
from pipeline.train.checkpoint import LINEAGE, list_states, load_latest, save_state
from pipeline.train.config import PhaseConfig, TrainConfig
from pipeline.train.data import MixtureSampler, packed_source, read_source, source_files
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
from pipeline.train.tokenizer import check_vocab_size, load_pretrained, token_bytes, train_bpe

PHASES = {"1": "phase1", "2": "phase2", "sft": "sft"}


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
    if phase not in PHASES:
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
    t, ckpt = cfg.train, cfg.run_dir / "checkpoints"
    if phase == "1":
        return PhasePlan("phase1", ckpt / "phase1", None, t.phase1)
    if phase == "2":
        return PhasePlan("phase2", ckpt / "phase2", ckpt / "phase1", t.phase2)
    s = t.sft
    schedule = PhaseConfig(mixture={s.source: 1.0}, tokens=s.tokens, lr=s.lr, min_lr_ratio=s.min_lr_ratio,
                           warmup_steps=s.warmup_steps, batch_size=s.batch_size, grad_accum=s.grad_accum)
    return PhasePlan("sft", ckpt / "sft", ckpt / "phase2", schedule, sft=True)


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

    t, folder = cfg.train, cfg.run_dir / "tokenizer"
    current = tokenizer_fingerprint(cfg)
    manifest = folder / "manifest.json"
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
                                      vocab=len(tok), lineage=current), tmp / "manifest.json")
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
        ref = manifest_ref(folder / "manifest.json", run_dir)
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
        texts.extend(docs["text"].iloc[np.sort(pick)].tolist())
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
    """The cheap checks, before a tokenizer is trained or a document read: sources with files, a
    vocab that fits the special tokens, a sequence length the model can take, a previous phase,
    an importable SFT parser."""
    t = cfg.train
    for name in mixture:
        source_files(name, t.sources[name], cfg.run_dir)
    if plan.sft:
        conversation_parser(t.sft.parser)
    if plan.init_from is None:
        if not t.tokenizer.pretrained:
            check_vocab_size(t.tokenizer.vocab_size)
        max_pos = model_shape(t.model)["max_position_embeddings"]
    else:
        if not (plan.init_from / "train_summary.json").exists():  # written after the final weights
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
        parents["tokenizer"] = manifest_ref(run_dir / "tokenizer" / "manifest.json", run_dir)
    else:
        parents[relative_name(plan.init_from, run_dir)] = manifest_ref(plan.init_from / "manifest.json", run_dir)
    return fingerprint(config, file_digests(files, run_dir), {k: v for k, v in parents.items() if v is not None})


def reuse_or_discard(plan: PhasePlan, current: dict[str, Any], restart: bool, d: Dist) -> dict[str, Any] | None:
    """Check the phase's final checkpoint and saved state against ``current``.

    Returns the final summary when the phase is already trained on exactly these inputs (nothing
    to do), None when training should start or resume. A mismatch raises LineageError, or with
    ``restart`` deletes the phase folder (state and final outputs) so training starts from scratch.
    """
    summary_path = plan.out_dir / "train_summary.json"  # written last: the phase is complete
    state_dir = plan.out_dir / "state"
    fresh = True
    if summary_path.exists():
        fresh = check_resume(f"the {plan.name} checkpoint", read_fingerprint(plan.out_dir / "manifest.json"),
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


# --- the loop ---------------------------------------------------------------------------------

def run_phase(cfg: Config, plan: PhasePlan, restart: bool = False) -> dict[str, Any]:
    """Train one phase to completion (or ``stop_at_step``), resuming from its latest state when
    that was built from the same inputs (``restart``: discard it when not)."""
    t, p = cfg.train, plan.schedule
    d = init_distributed(t.device)
    try:
        with library_bars_off():
            return _run(cfg, plan, t, p, d, restart)
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


def _run(cfg: Config, plan: PhasePlan, t: TrainConfig, p: PhaseConfig, d: Dist, restart: bool) -> dict[str, Any]:
    key = plan.key
    mixture = check_mixture(t, plan.mixture_key, p.mixture)
    tokens_per_step = p.batch_size * p.grad_accum * t.seq_len * d.world
    steps = p.tokens // tokens_per_step
    if steps < 1:
        raise TrainError(f"config key '{key}.tokens': budget {p.tokens} is less than one step of "
                         f"{tokens_per_step} tokens (batch_size x grad_accum x seq_len x world_size)")
    check_inputs(cfg, plan, mixture)
    if plan.init_from is None:
        tok = ensure_tokenizer(cfg, d, restart)
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(plan.init_from)  # the previous phase's, saved with its weights
    lineage = phase_fingerprint(cfg, plan, mixture, d.world)
    finished = reuse_or_discard(plan, lineage, restart, d)
    if finished is not None:
        return finished
    model = load_model(cfg, plan, tok)
    tok_id = tokenizer_id(cfg.run_dir / "tokenizer" if plan.init_from is None else plan.init_from)
    rows_per_step = p.batch_size * p.grad_accum * d.world
    if d.main:
        data = load_data(cfg, plan, tok, tok_id, steps * rows_per_step, mixture)
    barrier(d)  # rank 0 built the token shards; the others read the cache
    if not d.main:
        data = load_data(cfg, plan, tok, tok_id, steps * rows_per_step, mixture)

    model.to(d.device)
    decay = [q for q in model.parameters() if q.ndim >= 2]
    no_decay = [q for q in model.parameters() if q.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=p.lr, betas=t.betas, fused=d.device.type == "cuda")
    state_dir = plan.out_dir / "state"
    state = load_latest(state_dir, model, optimizer)
    if d.main:  # beside the states it vouches for, before the first of them is saved
        write_json({"lineage": lineage}, state_dir / LINEAGE)
    start = state["step"] if state else 0
    elapsed_before = state.get("elapsed_s", 0.0) if state else 0.0

    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if d.device.type == "cuda" \
        else contextlib.nullcontext
    fwd = model
    if d.device.type == "cuda" and t.compile:
        fwd = torch.compile(model)
    if d.world > 1 or d.initialized_here:
        from torch.nn.parallel import DistributedDataParallel

        fwd = DistributedDataParallel(fwd, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    fpt = flops_per_token(model, t.seq_len)
    peak = peak_flops(d.device)
    bytes_table = token_bytes(tok)
    log = MetricsLog(plan.out_dir, start, enabled=d.main)
    stop = min(steps, t.stop_at_step) if t.stop_at_step else steps

    def run_eval(step: int) -> dict[str, dict[str, float]]:
        results = evaluate(model, data.eval_sets, bytes_table, d.device, p.batch_size, tok.pad_token_id, autocast)
        for domain, r in results.items():
            log.log({"kind": "eval", "step": step, "tokens": step * tokens_per_step, "domain": domain, **r})
        return results

    model.train()
    train_time = 0.0
    bar = progress(total=stop, initial=start, desc=plan.name, unit="step", disable=not d.main)
    for step in range(start, stop):
        if d.main and t.eval_every and step % t.eval_every == 0 and (step > start or step == 0):
            run_eval(step)
        t0 = time.perf_counter()
        lr = lr_at(step, steps, p)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = []
        for m in range(p.grad_accum):
            offset = ((step * p.grad_accum + m) * d.world + d.rank) * p.batch_size
            rows = torch.from_numpy(data.sampler.rows(offset, p.batch_size))
            mask = torch.from_numpy(data.masks.rows(offset, p.batch_size)).bool() if data.masks else None
            inputs, targets = batch_targets(rows, mask, tok.pad_token_id)
            batches.append((inputs.to(d.device), targets.to(d.device)))
        step_loss, grad_norm = train_step(fwd, model, optimizer, batches, d, t.grad_clip, autocast)
        if d.world > 1:
            torch.distributed.all_reduce(step_loss)
        loss_value = float(step_loss) / d.world
        if not math.isfinite(loss_value):
            raise TrainError(f"{plan.name}: loss is {loss_value} at step {step}; lower {key}.lr")
        dt = time.perf_counter() - t0
        train_time += dt
        done = step + 1
        if d.main and (done % t.log_every == 0 or done == stop):
            tps = tokens_per_step / dt
            log.log({"kind": "train", "step": done, "tokens": done * tokens_per_step, "loss": loss_value, "lr": lr,
                     "grad_norm": float(grad_norm), "tokens_per_s": tps,
                     "mfu": fpt * tps / (peak * d.world) if peak else None})
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tps:,.0f}")
        bar.update(1)
        if done % t.checkpoint_every == 0 or done == stop:
            if d.main:
                save_state(state_dir, done, model, optimizer, done * rows_per_step,
                           {"elapsed_s": elapsed_before + train_time, "steps": steps}, t.keep_checkpoints)
            barrier(d)
    bar.close()

    done = max(start, stop)
    summary: dict[str, Any] = {"phase": plan.name, "steps": steps, "steps_done": done, "stopped_early": done < steps}
    if d.main and done == steps:
        final_val = run_eval(steps) if data.eval_sets else {}
        model.save_pretrained(plan.out_dir)
        tok.save_pretrained(plan.out_dir)
        if plan.sft:
            model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
            model.generation_config.save_pretrained(plan.out_dir)
        follow_umask(plan.out_dir)
        metrics = read_metrics(log.path)
        plot_losses(metrics, plan.out_dir / "loss.png", f"{plan.name} ({cfg.run_dir.name})")
        summary.update(phase_summary(cfg, plan, model, data, steps, tokens_per_step, rows_per_step, metrics,
                                     final_val, d, fpt, peak, mixture))
        outputs = file_digests((f for f in plan.out_dir.iterdir() if f.is_file() and f.name not in
                                ("manifest.json", "metrics.jsonl", "train_summary.json")), cfg.run_dir)
        write_json(build_manifest("train", public_dict(cfg), phase=plan.name,
                                  init_from=relative_name(plan.init_from, cfg.run_dir) if plan.init_from else None,
                                  sources=data.sources, tokenizer=tok_id, lineage=lineage, outputs=outputs),
                   plan.out_dir / "manifest.json")
        write_json(summary, plan.out_dir / "train_summary.json")  # last: it marks the phase complete
    log.close()
    barrier(d)
    return summary


def follow_umask(folder: Path) -> None:
    """Give the files directly in ``folder`` the mode an ordinary ``open`` would: safetensors writes
    ``model.safetensors`` through a 0600 temporary file, whatever the umask."""
    mode = 0o666 & ~current_umask()
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, mode)


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


def phase_summary(cfg, plan, model, data, steps, tokens_per_step, rows_per_step, metrics, final_val, d,
                  fpt, peak, mixture) -> dict[str, Any]:
    """What the model card reads: budget, per-source tokens, final per-domain val loss/bpb, speed."""
    t = cfg.train
    rows = data.sampler.counts(steps * rows_per_step)
    train_rows = [r for r in metrics if r["kind"] == "train"]
    # steady-state speed: skip the first steps (allocation, compilation)
    tps = pd.Series([r["tokens_per_s"] for r in train_rows[len(train_rows) // 5:]], dtype=float)
    tokens_per_s = float(tps.median()) if len(tps) else None
    return {
        "init_from": str(plan.init_from) if plan.init_from else None,
        "tokens": steps * tokens_per_step,
        "tokens_per_step": tokens_per_step,
        "seq_len": t.seq_len,
        "mixture": {n: w / sum(mixture.values()) for n, w in mixture.items()},
        "tokens_per_source": {n: c * t.seq_len for n, c in rows.items()},
        "token_shares": {n: c / max(1, sum(rows.values())) for n, c in rows.items()},
        "sequences_per_source": rows,
        "source_stats": {n: {k: v for k, v in info.items() if k not in ("key", "arrays")}
                         for n, info in data.sources.items()},
        "final_train_loss": train_rows[-1]["loss"] if train_rows else None,
        "final_val": final_val,
        "tokens_per_s": tokens_per_s,
        "mfu": fpt * tokens_per_s / (peak * d.world) if peak and tokens_per_s else None,
        "flops_per_token": fpt,
        "parameters": sum(q.numel() for q in model.parameters()),
        "device": str(d.device) if d.device.type == "cpu" else torch.cuda.get_device_name(d.device),
        "world_size": d.world,
        "train_time_s": sum(tokens_per_step / r["tokens_per_s"] for r in train_rows),
        "checkpoints": [p.name for p in list_states(plan.out_dir / "state")],
    }
