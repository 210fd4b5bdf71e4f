"""The classifier's report figure: validation score histograms, the confusion matrix, the PR curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from filters.quality import precision_recall_curve
from pipeline.io import write_png


def classifier_figure(labels: np.ndarray, scores: np.ndarray, metrics: dict[str, Any], heading: str = "") -> Any:
    """Three panels: score histograms per label with the thresholds drawn on them, the confusion
    matrix at the decision threshold in a panel of its own (never over the bars), and the PR curve.

    ``heading`` (e.g. the label rule and the verdict) tops the figure, above the headline metrics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    m = metrics
    fig, (hist, matrix, pr) = plt.subplots(1, 3, figsize=(14, 4.8), gridspec_kw={"width_ratios": [5, 2, 5]})
    ci = m.get("roc_auc_ci")
    headline = (f"validation n={m['n']} ({m['positives']} positive)   ROC-AUC {_num(m['roc_auc'])}"
                + (f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else "")
                + f"   F1 {_num(m['f1'])} (P {_num(m['precision'])}, R {_num(m['recall'])}) at {m['threshold']}"
                + (f"   Spearman vs LLM {_num(m['spearman_vs_llm'])}" if m.get("spearman_vs_llm") is not None else ""))
    fig.suptitle(f"{heading}\n{headline}" if heading else headline, fontsize=10)

    bins = np.linspace(0, 1, 41)
    for value, name, color in ((0, "negative", "tab:red"), (1, "positive", "tab:blue")):
        hist.hist(scores[labels == value], bins=bins, alpha=0.6, color=color,
                  label=f"{name} (n={int((labels == value).sum())})")
    hist.axvline(m["threshold"], color="k", linestyle="--", linewidth=1, label=f"decision threshold {m['threshold']}")
    best = (m.get("best_f1") or {}).get("threshold")
    if best is not None and best != m["threshold"]:
        hist.axvline(best, color="tab:green", linestyle=":", linewidth=1.2, label=f"best-F1 threshold {best:.3f}")
    hist.set(xlabel="edu_score (P(positive))", ylabel="validation documents", title="Scores per label", xlim=(0, 1))
    hist.legend(loc="best", fontsize=8)

    cm = m["confusion_matrix"]
    cells = np.array([[cm["tp"], cm["fn"]], [cm["fp"], cm["tn"]]])
    matrix.imshow(cells, cmap="Blues", vmin=0, vmax=max(int(cells.max()), 1))
    for (i, j), count in np.ndenumerate(cells):
        matrix.text(j, i, str(count), ha="center", va="center", fontsize=11,
                    color="white" if count > cells.max() / 2 else "black")
    matrix.set_xticks([0, 1], ["pred +", "pred -"])
    matrix.set_yticks([0, 1], ["true +", "true -"])
    matrix.set_title(f"Confusion at {m['threshold']}")

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
    return fig


def plot_classifier_report(labels: np.ndarray, scores: np.ndarray, metrics: dict[str, Any], path: Path,
                           heading: str = "") -> Path:
    """Save :func:`classifier_figure` as a PNG, atomically."""
    return write_png(classifier_figure(labels, scores, metrics, heading), path)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
