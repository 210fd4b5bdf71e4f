"""The classifier's report figure: validation score histograms per label and the PR curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from filters.quality import precision_recall_curve
from pipeline.io import write_png


def plot_classifier_report(labels: np.ndarray, scores: np.ndarray, metrics: dict[str, Any], path: Path,
                           heading: str = "") -> Path:
    """Save a two-panel PNG (histogram of scores per label, precision-recall curve) atomically.

    ``heading`` (e.g. the label rule and the verdict) tops the figure, above the headline metrics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    m = metrics
    fig, (hist, pr) = plt.subplots(1, 2, figsize=(11, 4.8))
    headline = (f"validation n={m['n']} ({m['positives']} positive)   ROC-AUC {_num(m['roc_auc'])}   "
                f"F1 {_num(m['f1'])} (P {_num(m['precision'])}, R {_num(m['recall'])}) at {m['threshold']}"
                + (f"   Spearman vs LLM {_num(m['spearman_vs_llm'])}" if m.get("spearman_vs_llm") is not None else ""))
    fig.suptitle(f"{heading}\n{headline}" if heading else headline, fontsize=10)
    bins = np.linspace(0, 1, 41)
    for value, name, color in ((0, "negative", "tab:red"), (1, "positive", "tab:blue")):
        hist.hist(scores[labels == value], bins=bins, alpha=0.6, color=color,
                  label=f"{name} (n={int((labels == value).sum())})")
    hist.axvline(m["threshold"], color="k", linestyle="--", linewidth=1, label=f"decision threshold {m['threshold']}")
    cm = m["confusion_matrix"]
    hist.text(0.5, 0.55, f"at {m['threshold']}  pred+  pred-\ntrue+  {cm['tp']:>6} {cm['fn']:>6}\n"
              f"true-  {cm['fp']:>6} {cm['tn']:>6}", transform=hist.transAxes, ha="center", va="center",
              family="monospace", fontsize=8.5, bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85})
    hist.set(xlabel="edu_score (P(positive))", ylabel="validation documents", title="Scores per label")
    hist.legend(loc="upper left", fontsize=9)

    if m.get("roc_auc") is not None:
        precision, recall, _ = precision_recall_curve(labels, scores)
        pr.step(np.r_[0, recall], np.r_[precision[0], precision], where="pre", color="tab:blue",
                label=f"average precision {m['average_precision']:.3f}")
        pr.scatter([m["recall"]], [m["precision"]], color="k", zorder=3,
                   label=f"at {m['threshold']}: P {m['precision']:.3f}, R {m['recall']:.3f}, F1 {m['f1']:.3f}")
        pr.axhline(labels.mean(), color="grey", linestyle=":", label=f"chance ({labels.mean():.2f})")
        pr.legend(loc="lower left", fontsize=9)
    pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall (validation)")
    fig.tight_layout(rect=(0, 0, 1, 0.95 if heading else 0.97))
    return write_png(fig, path)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
