"""A phase's lineage and its training state for exact resume.

The fingerprint (:func:`phase_fingerprint`) is what a phase's weights are a function of; it is stored
in the phase's ``manifest.json`` and in ``state/lineage.json`` beside the resumable states, and
:func:`reuse_or_discard` checks both before a run starts. A state is model, optimizer, step (the LR
schedule is a function of it), RNG states and the data position, saved atomically under
``<phase dir>/state/step-NNNNNN/``."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import TrainError
from pipeline.io import atomic_dir, read_json
from pipeline.lineage import (
    check_resume,
    file_digests,
    fingerprint,
    manifest_ref,
    read_fingerprint,
    relative_name,
)
from pipeline.progress import note
from pipeline.rundir import (
    TRAIN_SUMMARY,
    RunDir,
    list_states,
    manifest_path,
    state_dir,
    state_lineage,
    state_path,
)
from pipeline.sources import source_files, source_parents
from pipeline.train.config import TrainConfig
from pipeline.train.distributed import Dist, barrier
from pipeline.train.plan import PhasePlan


def save_state(folder: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               data_position: int, extra: dict[str, Any], keep: int) -> Path:
    """Write ``folder/step-{step:06d}/state.pt`` (temporary folder, then rename; modes follow the
    umask); keep the last ``keep``."""
    final = state_path(folder, step)
    state = {
        "step": step,
        "data_position": data_position,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        **extra,
    }
    with atomic_dir(final) as tmp:
        torch.save(state, tmp / "state.pt")
    for old in list_states(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore the newest state into ``model`` and ``optimizer``; returns it (None when there is none)."""
    states = list_states(folder)
    if not states:
        return None
    path = states[-1] / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated file: name it so the user can delete it
        raise TrainError(f"{path}: cannot load checkpoint ({type(e).__name__}); delete it to resume "
                         f"from the previous one") from None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


# --- a phase's lineage ------------------------------------------------------------------------

def phase_fingerprint(t: TrainConfig, run_dir: Path, plan: PhasePlan, mixture: dict[str, float],
                      world: int) -> dict[str, Any]:
    """What a phase's weights are a function of: its schedule and mixture, the sources' definitions
    and the digests of every shard they read, the seed, sequence length, optimizer settings and
    world size (it sets the steps and each rank's rows), the model shape for phase 1; and as
    parents the manifests of the stages that wrote those shards, of the tokenizer and of the
    phase it starts from (so a retrained phase 1 stops phase 2 from resuming)."""
    config: dict[str, Any] = {
        "seed": plan.seed, plan.key: plan.schedule.model_dump(exclude={"mixture"}), plan.mixture_key: mixture,
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
    states = state_dir(plan.out_dir)
    fresh = True
    if summary_path.exists():
        fresh = check_resume(f"the {plan.name} checkpoint", read_fingerprint(manifest_path(plan.out_dir)),
                             current, restart, plan.out_dir)
    if fresh and list_states(states):
        fresh = check_resume(f"the saved {plan.name} training state", read_fingerprint(state_lineage(plan.out_dir)),
                             current, restart, states)
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
