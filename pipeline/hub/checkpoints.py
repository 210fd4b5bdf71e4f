"""What the model card says about trained checkpoints: architecture, parameters, tokens, evals.

Read from ``config.json``, the safetensors header (no weights are loaded) and ``train_summary.json``.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from pipeline.hub.artifacts import RunArtifacts
from pipeline.rundir import PHASES

ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "vocab_size", "max_position_embeddings",
                     "tie_word_embeddings", "rope_theta", "torch_dtype", "dtype")


def count_parameters(folder: Path) -> int | None:
    """Parameters in the checkpoint's ``*.safetensors`` files, from their JSON headers alone."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total


def architecture(config: dict[str, Any] | None) -> dict[str, Any]:
    if not config:
        return {}
    arch = {k: config[k] for k in ARCHITECTURE_KEYS if k in config}
    if config.get("architectures"):
        arch["architectures"] = ", ".join(config["architectures"])
    return arch


def checkpoint_summary(phase: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Steps, tokens (total and per source) and final validation loss / bits per byte per domain.

    Reads the fields ``pipeline.train`` writes to ``train_summary.json``.
    """
    summary = checkpoint.get("summary") or {}
    domains = {d: v for d, v in (summary.get("final_val") or {}).items() if isinstance(v, dict)}
    return {
        "phase": phase,
        "steps": summary.get("steps_done"),
        "tokens": summary.get("tokens"),
        "tokens_per_source": summary.get("tokens_per_source") or {},
        "mixture": summary.get("mixture"),
        "evals": domains,
        "evals_loss": ", ".join(f"{d} {_f(v.get('loss'))}" for d, v in domains.items()),
        "evals_bpb": ", ".join(f"{d} {_f(v.get('bpb'))}" for d, v in domains.items()),
        "tokens_per_second": summary.get("tokens_per_s"),
        "seconds": summary.get("train_time_s"),
        "final_train_loss": summary.get("final_train_loss"),
        "device": summary.get("device"),
        "mfu": summary.get("mfu"),
        "has_summary": bool(summary),
    }


def training_section(art: RunArtifacts) -> list[dict[str, Any]]:
    return [checkpoint_summary(p, art.checkpoints[p]) for p in PHASES if p in art.checkpoints]


def final_checkpoint(art: RunArtifacts, name: str | None = None) -> str | None:
    """``name`` if given, else the last phase that has a checkpoint (sft, then phase2, then phase1)."""
    if name:
        return name if name in art.checkpoints else None
    return next((p for p in reversed(PHASES) if p in art.checkpoints), None)


def _f(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
