"""Evaluation and logging: token losses, validation loss and bits per byte per domain, metrics
(JSONL + TensorBoard) and the loss-curve PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.io import write_png
from pipeline.rundir import METRICS

IGNORE = -100
TENSORBOARD = "tensorboard"
"""Beside metrics.jsonl in a phase folder: the TensorBoard event files."""


def batch_targets(rows: torch.Tensor, mask: torch.Tensor | None, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of packed rows; targets are IGNORE where the mask is false or on padding."""
    inputs, targets = rows[:, :-1], rows[:, 1:].clone()
    keep = mask[:, 1:] if mask is not None else targets != pad
    targets[~keep] = IGNORE
    return inputs, targets


def token_losses(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in nats per target position (0 where the target is IGNORE)."""
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                           reduction="none").view_as(targets)


@torch.no_grad()
def evaluate(model, domains: dict[str, tuple[np.ndarray, np.ndarray | None]], token_bytes: np.ndarray,
             device: torch.device, batch_size: int, pad: int, autocast) -> dict[str, dict[str, float]]:
    """Per domain: mean loss per target token and bits per byte (nats / ln 2 / UTF-8 bytes of targets).

    Special tokens (0 bytes) are excluded from bits per byte, as they carry no text.
    """
    was_training = model.training
    model.eval()
    nbytes_of = torch.as_tensor(token_bytes, device=device)
    out = {}
    for name, (rows, mask) in domains.items():
        nats = torch.zeros((), device=device, dtype=torch.float64)
        nats_text = torch.zeros((), device=device, dtype=torch.float64)
        count = torch.zeros((), device=device, dtype=torch.float64)
        nbytes = torch.zeros((), device=device, dtype=torch.float64)
        for start in range(0, len(rows), batch_size):
            x = torch.as_tensor(rows[start:start + batch_size].astype(np.int64), device=device)
            m = torch.as_tensor(mask[start:start + batch_size], device=device) if mask is not None else None
            inputs, targets = batch_targets(x, m, pad)
            with autocast():
                loss = token_losses(model, inputs, targets)
            valid = targets != IGNORE
            tb = nbytes_of[targets.clamp(min=0)] * valid
            nats += loss[valid].sum().double()
            count += valid.sum()
            nats_text += loss[tb > 0].sum().double()
            nbytes += tb.sum()
        out[name] = {"loss": float(nats / count.clamp(min=1)),
                     "bpb": float(nats_text / (math.log(2) * nbytes)) if nbytes > 0 else float("nan"),
                     "targets": int(count)}
    model.train(was_training)
    return out


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line, ``kind`` train|eval) mirrored to TensorBoard."""

    def __init__(self, folder: Path, resume_step: int, enabled: bool = True):
        self.path = folder / METRICS
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        # a resumed run rewrites history from its checkpoint on: drop rows logged after it
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if resume_step else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder / TENSORBOARD), purge_step=resume_step + 1 if resume_step else None)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        step = row["step"]
        if row["kind"] == "train":
            for k in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
                if row.get(k) is not None:
                    self.writer.add_scalar(f"train/{k}", row[k], step)
        else:
            self.writer.add_scalar(f"val_loss/{row['domain']}", row["loss"], step)
            if not math.isnan(row["bpb"]):
                self.writer.add_scalar(f"val_bpb/{row['domain']}", row["bpb"], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_losses(metrics: list[dict], path: Path, title: str) -> Path:
    """Train loss and per-domain validation loss against tokens seen, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [r for r in metrics if r["kind"] == "train"]
    ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], label="train", lw=1, alpha=0.8)
    for domain in sorted({r["domain"] for r in metrics if r["kind"] == "eval"}):
        rows = [r for r in metrics if r["kind"] == "eval" and r["domain"] == domain]
        ax.plot([r["tokens"] for r in rows], [r["loss"] for r in rows], marker="o", label=f"val {domain}")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return write_png(fig, path)
