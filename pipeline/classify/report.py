"""The classifier's held-out metrics (ROC-AUC with a bootstrap interval, PR curve, F1, Spearman) and its
report figure: validation score histograms, the confusion matrix, the PR curve."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import write_png

# --- metrics ---------------------------------------------------------------------------------

def evaluate_scores(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5,
                    llm_scores: Sequence[float] | None = None) -> dict[str, Any]:
    """Held-out metrics of positive-class probabilities ``scores`` against 0/1 ``labels``.

    Returns precision, recall, F1, accuracy and the confusion matrix at ``threshold`` (predict
    positive when score >= threshold), ROC-AUC and average precision (threshold-free; None when
    the set has one class), the probability threshold with the best F1, Spearman's rho against
    ``llm_scores`` (the raw 0-5 LLM labels) when given, and counts. Plain floats/ints: JSON-ready.
    """
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    pred = s >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    tn = int((~pred & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    both = 0 < y.sum() < len(y)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "positives": int(y.sum()),
        "negatives": int(len(y) - y.sum()),
        "threshold": float(threshold),
        "precision": _f(precision),
        "recall": _f(recall),
        "f1": _f(2 * precision * recall / (precision + recall) if precision + recall else 0.0),
        "accuracy": _f((tp + tn) / len(y)) if len(y) else None,
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "roc_auc": _f(roc_auc(y, s)) if both else None,
        "average_precision": _f(average_precision(y, s)) if both else None,
        "best_f1": best_f1_threshold(y, s) if both else None,
        "spearman_vs_llm": None,
    }
    if llm_scores is not None and len(y) > 2:
        out["spearman_vs_llm"] = _f(spearman(np.asarray(llm_scores, dtype=float), s))
    return out


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing their average rank (as in Mann-Whitney and Spearman)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    tied = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = tied
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(a random positive outscores a random negative), ties count half."""
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    ranks = average_ranks(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc_interval(labels: Sequence[int], scores: Sequence[float], seed: int = 0, resamples: int = 1000,
                     level: float = 0.95) -> list[float] | None:
    """A seeded percentile-bootstrap confidence interval ``[low, high]`` of the ROC-AUC.

    Positives and negatives are resampled separately (stratified), so every replicate has both
    classes and the interval reflects the size of the smaller one: 3 negatives give a wide one.
    None when a class is empty.
    """
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return None
    rng = np.random.default_rng(seed)
    aucs = np.empty(resamples)
    for i in range(resamples):
        p = rng.choice(pos, len(pos))
        n = np.sort(rng.choice(neg, len(neg)))
        below = np.searchsorted(n, p, "left")
        tied = np.searchsorted(n, p, "right") - below
        aucs[i] = (below.sum() + 0.5 * tied.sum()) / (len(p) * len(n))
    low, high = np.quantile(aucs, [(1 - level) / 2, (1 + level) / 2])
    return [round(float(low), 6), round(float(high), 6)]


def precision_recall_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall when keeping ``score >= t``, for every distinct score ``t`` (descending)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    kept = last + 1
    return tp / kept, tp / max(int(labels.sum()), 1), s[last]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Sum over thresholds of precision times the recall gained: the area under the PR curve."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """The probability threshold on the PR curve with the highest F1, and that F1/P/R."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    i = int(np.argmax(f1))
    return {"threshold": _f(thresholds[i]), "f1": _f(f1[i]), "precision": _f(precision[i]),
            "recall": _f(recall[i])}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson on average ranks); NaN when either side is constant."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def _f(x: float) -> float | None:
    """A JSON-safe float: NaN/inf become None so a report never holds invalid JSON."""
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None



# --- the figure ------------------------------------------------------------------------------


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
