"""Training state for exact resume: model, optimizer, step (the LR schedule is a function of it),
RNG states and the data position, saved atomically under ``<phase dir>/state/step-NNNNNN/``.

``state/lineage.json`` holds the fingerprint of what the states were trained on (the loop checks it
before it resumes, so a run never continues on data or settings that changed)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import TrainError
from pipeline.io import atomic_dir

STATE = "state"
"""In a phase folder: the resumable states ``step-NNNNNN/`` and their ``lineage.json``."""
LINEAGE = "lineage.json"
"""In the state folder: ``{"lineage": fingerprint}`` of the run its states belong to."""


def save_state(folder: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               data_position: int, extra: dict[str, Any], keep: int) -> Path:
    """Write ``folder/step-{step:06d}/state.pt`` (temporary folder, then rename; modes follow the
    umask); keep the last ``keep``."""
    final = folder / f"step-{step:06d}"
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


def list_states(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("step-*") if (p / "state.pt").exists())


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
