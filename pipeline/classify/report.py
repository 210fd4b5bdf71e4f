"""The classifier's report figure: validation score histograms per label and the PR curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from filters.quality import precision_recall_curve


def plot_classifier_report(labels: np.ndarray, scores: np.ndarray, metrics: dict[str, Any], path: Path) -> Path:
    """Save a two-panel PNG (histogram of scores per label, precision-recall curve) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    fig, (hist, pr) = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = np.linspace(0, 1, 41)
    for value, name, color in ((0, "negative", "tab:red"), (1, "positive", "tab:blue")):
        hist.hist(scores[labels == value], bins=bins, alpha=0.6, color=color,
                  label=f"{name} (n={int((labels == value).sum())})")
    hist.axvline(metrics["threshold"], color="k", linestyle="--", linewidth=1, label="threshold")
    hist.set(xlabel="edu_score (P(positive))", ylabel="validation documents", title="Scores per label")
    hist.legend()

    if metrics.get("roc_auc") is not None:
        precision, recall, _ = precision_recall_curve(labels, scores)
        pr.step(np.r_[0, recall], np.r_[precision[0], precision], where="pre", color="tab:blue",
                label=f"AP {metrics['average_precision']:.3f}, ROC-AUC {metrics['roc_auc']:.3f}")
        pr.scatter([metrics["recall"]], [metrics["precision"]], color="k", zorder=3,
                   label=f"at {metrics['threshold']}: F1 {metrics['f1']:.3f}")
        pr.axhline(labels.mean(), color="grey", linestyle=":", label="chance")
        pr.legend(loc="lower left")
    pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall (validation)")
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
