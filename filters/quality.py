"""The fastText educational-value classifier: normalise, train, evaluate, score.

Pure functions over texts and labels, plus `EduClassifier`, which holds one loaded model. The
filter stage scores with `load_edu_classifier(path).score(texts)` (one model per Dask worker
process) and turns a `keep_top` fraction into a threshold with `percentile_threshold`.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cluster import worker_cached
from pipeline.errors import ClassifierError

POSITIVE_LABEL = "__label__edu"
NEGATIVE_LABEL = "__label__other"
_FASTTEXT_MAGIC = (793712314).to_bytes(4, "little")
MAX_CHARS = 100_000
"""Characters of a document that are normalised and seen by fastText; the rest of a 10 MB page
adds cost, not signal."""

# Words and single punctuation marks: "sunlight," and "sunlight" become the same word, which
# matters far more for a small labelled set than the cost of one regex pass.
_TOKEN = re.compile(r"\w+|[^\w\s\x00-\x1f\x7f-\x9f]")  # control characters are dropped


def normalize_for_fasttext(text: Any) -> str:
    """One line of lower-cased, space-separated words and punctuation, fit for fastText.

    Contract: never raises. ``None``/NaN/non-text give ``""``; ``bytes`` are decoded as UTF-8 with
    invalid sequences replaced; lone surrogates are replaced; only the first ``MAX_CHARS``
    characters are kept; the label prefix ``__label__`` is removed so a document can never
    smuggle in a label; the result has no newline (fastText reads one example per line).
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text[: MAX_CHARS * 4]).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        return ""
    text = text[:MAX_CHARS].lower()
    if "__label__" in text:
        text = text.replace("__label__", " ")
    line = " ".join(_TOKEN.findall(text))
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from a lenient decoder upstream: fastText would raise
            line = line.encode("utf-8", errors="replace").decode("utf-8")
    return line


# --- training --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainParams:
    """fastText supervised hyper-parameters (names as in fastText's Python API)."""

    epoch: int = 10
    lr: float = 0.2
    dim: int = 64
    word_ngrams: int = 2
    min_count: int = 2
    bucket: int = 200_000
    threads: int | None = None
    seed: int = 0


def train_fasttext(texts: Sequence[str], labels: Sequence[int], params: TrainParams = TrainParams(),
                   attempts: int = 4) -> tuple[Any, float]:
    """Train a supervised fastText model on normalised one-line ``texts`` and 0/1 ``labels``.

    Contract: texts are already normalised (see `normalize_for_fasttext`) and non-empty; both
    classes are present (else `ClassifierError`). Returns the in-memory `fasttext` model (labels
    `POSITIVE_LABEL`, `NEGATIVE_LABEL`) and the learning rate it was trained with: fastText can
    diverge ("Encountered NaN", seen with small hash tables), so training is retried with the
    rate halved, up to ``attempts`` times, before `ClassifierError`.

    Each attempt runs in a fresh Python process: fastText's training reads memory left over by
    earlier models in the same process, so a second training there is neither reproducible nor
    safe from spurious NaN. A fresh process makes ``threads=1`` runs bit-for-bit repeatable.
    """
    import fasttext

    if len(texts) != len(labels):
        raise ClassifierError(f"{len(texts)} texts but {len(labels)} labels")
    if len(set(int(y) for y in labels)) < 2:
        raise ClassifierError("training needs both positive and negative examples")
    work = Path(tempfile.mkdtemp(prefix="edu_fasttext."))
    data, model_path = work / "train.txt", work / "model.bin"
    try:
        with open(data, "w", encoding="utf-8") as f:
            for text, y in zip(texts, labels, strict=True):
                f.write(f"{POSITIVE_LABEL if y else NEGATIVE_LABEL} {text}\n")
        options = {"input": str(data), "epoch": params.epoch, "dim": params.dim, "wordNgrams": params.word_ngrams,
                   "minCount": params.min_count, "bucket": params.bucket,
                   "thread": params.threads or os.cpu_count() or 1, "seed": params.seed, "loss": "softmax",
                   "verbose": 2 if sys.stderr.isatty() else 0}  # fastText's own progress line: rate, ETA
        lr = params.lr
        for attempt in range(attempts):
            child = subprocess.run([sys.executable, "-c", _TRAIN_IN_CHILD, json.dumps({**options, "lr": lr}),
                                    str(model_path)], stdout=subprocess.PIPE, text=True)
            if child.returncode == 0:
                return fasttext.load_model(str(model_path)), lr
            said = child.stdout.strip().splitlines()
            error = said[-1] if said else f"training process exited with code {child.returncode}"
            if "NaN" not in error or attempt == attempts - 1:
                raise ClassifierError(f"fastText training failed at lr={lr}: {error} "
                                      "(lower classifier.lr or raise classifier.bucket)")
            lr /= 2
        raise AssertionError("unreachable")
    finally:
        for path in (data, model_path):
            path.unlink(missing_ok=True)
        work.rmdir()


# The child of `train_fasttext`: train, save, and print fastText's error (e.g. "Encountered NaN") on failure.
_TRAIN_IN_CHILD = """
import json, sys
import fasttext
try:
    fasttext.train_supervised(**json.loads(sys.argv[1])).save_model(sys.argv[2])
except RuntimeError as e:
    print(e)
    sys.exit(3)
"""


# --- evaluation ------------------------------------------------------------------------------

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


# --- thresholds ------------------------------------------------------------------------------

def percentile_threshold(scores: Iterable[float], keep_top: float) -> float:
    """The score at which the top ``keep_top`` fraction of documents is kept (keep ``score >= t``).

    Contract: ``0 < keep_top <= 1`` (else `ClassifierError`); NaN scores are ignored; exactly
    ``ceil(keep_top * n)`` documents score >= t unless ties at t keep a few more; ``keep_top=1``
    returns the minimum score (keep all); an empty set returns +inf (keep nothing).
    """
    if not 0 < keep_top <= 1:
        raise ClassifierError(f"keep_top must be in (0, 1], got {keep_top}")
    s = np.asarray(scores if isinstance(scores, np.ndarray) else list(scores), dtype=np.float64).ravel()
    s = s[~np.isnan(s)]
    if s.size == 0:
        return float("inf")
    k = min(s.size, max(1, math.ceil(keep_top * s.size - 1e-9)))
    # The k-th largest value, found in O(n) without sorting the whole corpus.
    return float(np.partition(s, s.size - k)[s.size - k])


# --- scoring ---------------------------------------------------------------------------------

@dataclass
class EduClassifier:
    """A loaded fastText model that scores texts for educational value.

    ``score(texts)`` returns one float32 in [0, 1] per text: the probability of
    ``positive_label``. Texts are normalised with `normalize_for_fasttext` (one line, truncated
    to ``MAX_CHARS``) and predicted in one batched call; empty or non-text input scores 0.0.
    """

    model: Any
    path: str
    positive_label: str = POSITIVE_LABEL
    labels: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path, positive_label: str | None = None) -> EduClassifier:
        """Load a fastText ``.bin`` model; `ClassifierError` if it is missing or not supervised.

        ``positive_label`` defaults to `POSITIVE_LABEL`; pass e.g. ``"__label__hq"`` to use a
        DCLM model.
        """
        import fasttext

        path = str(path)
        if not Path(path).is_file():
            raise ClassifierError(f"{path}: classifier model not found (run `textbook train-classifier` "
                                  "or set filter.quality.model)")
        with open(path, "rb") as f:
            header = f.read(4)
        # Checked before fastText reads it: its loader trusts the sizes in the file, so a non-model
        # gets a clear message here instead of whatever the loader makes of it.
        if header != _FASTTEXT_MAGIC:
            raise ClassifierError(f"{path}: not a fastText model (bad file header)")
        try:
            model = fasttext.load_model(path)
            labels = list(model.labels)
        except (ValueError, RuntimeError, MemoryError) as e:
            raise ClassifierError(f"{path}: not a fastText model ({e})") from None
        label = positive_label or POSITIVE_LABEL
        if label not in labels:
            raise ClassifierError(f"{path}: model has labels {labels}, not the positive label {label!r}")
        return cls(model=model, path=path, positive_label=label, labels=labels)

    def score(self, texts: Sequence[Any]) -> np.ndarray:
        """Probability of the positive class per text, float32 in [0, 1]; never raises on bad text."""
        lines = [normalize_for_fasttext(t) for t in texts]
        out = np.zeros(len(lines), dtype=np.float32)
        todo = [i for i, line in enumerate(lines) if line]
        if not todo:
            return out
        all_labels, all_probs = self.model.predict([lines[i] for i in todo], k=-1)
        positive = self.positive_label
        for i, labels, probs in zip(todo, all_labels, all_probs, strict=True):
            for label, p in zip(labels, probs, strict=True):
                if label == positive:
                    out[i] = p
                    break
        # fastText smooths probabilities by 1e-5, so 1.00001 can appear.
        return np.clip(out, 0.0, 1.0, out=out)


def load_edu_classifier(path: str | Path, positive_label: str | None = None) -> EduClassifier:
    """`EduClassifier.load(path)`, cached: loaded once per (Dask worker) process and reused."""
    key = ("edu_classifier", str(Path(path).resolve()), positive_label)
    return worker_cached(key, lambda: EduClassifier.load(path, positive_label))
