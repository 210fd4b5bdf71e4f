"""The ``edu_score`` filter: a fastText educational-value classifier, loaded once per process.

`normalize_for_fasttext` is the one text form both training (``pipeline.classify.train``) and
scoring see; `EduClassifier` holds one loaded model and scores a batch in one call;
`load_edu_classifier` keeps it loaded for every later batch of the process (a Dask worker is a
process: one load per worker); `EduScore` is the score/keep filter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from filters.base import TEXT, Filter, ModelError

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
        """Load a fastText ``.bin`` model; `ModelError` if it is missing or not supervised.

        ``positive_label`` defaults to `POSITIVE_LABEL`; pass e.g. ``"__label__hq"`` to use a
        DCLM model.
        """
        import fasttext

        path = str(path)
        if not Path(path).is_file():
            raise ModelError(f"{path}: classifier model not found (run `textbook train-classifier` "
                                  "or set filter.quality.model)")
        with open(path, "rb") as f:
            header = f.read(4)
        # Checked before fastText reads it: its loader trusts the sizes in the file, so a non-model
        # gets a clear message here instead of whatever the loader makes of it.
        if header != _FASTTEXT_MAGIC:
            raise ModelError(f"{path}: not a fastText model (bad file header)")
        try:
            model = fasttext.load_model(path)
            labels = list(model.labels)
        except (ValueError, RuntimeError, MemoryError) as e:
            raise ModelError(f"{path}: not a fastText model ({e})") from None
        label = positive_label or POSITIVE_LABEL
        if label not in labels:
            raise ModelError(f"{path}: model has labels {labels}, not the positive label {label!r}")
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


_LOADED: dict[tuple[str, str | None], EduClassifier] = {}


def load_edu_classifier(path: str | Path, positive_label: str | None = None) -> EduClassifier:
    """`EduClassifier.load(path)`, cached: loaded once per process (per Dask worker) and reused."""
    key = (str(Path(path).resolve()), positive_label)
    if key not in _LOADED:
        _LOADED[key] = EduClassifier.load(path, positive_label)
    return _LOADED[key]


# --- the filter --------------------------------------------------------------------------------

class EduScore(Filter):
    """Score ``edu_score`` in [0, 1] with the model at ``model``; keep ``edu_score >= threshold``.

    The model is loaded once per process (once per Dask worker). A percentile threshold
    (keep the top X%) is resolved over the whole corpus by the caller, then set here.
    """

    name: ClassVar[str] = "quality"
    stage: ClassVar[str] = "quality"
    reasons: ClassVar[tuple[str, ...]] = ("quality:low_edu_score",)
    score_fields: ClassVar[tuple[str, ...]] = ("model", "model_digest")

    model: str
    model_digest: str = ""
    """Identity of the model file: stored scores are stale when it changes."""
    threshold: float = 0.5

    def score(self, batch: pd.DataFrame) -> pd.DataFrame:
        scores = load_edu_classifier(self.model).score(batch[TEXT].tolist())
        return pd.DataFrame({"edu_score": scores.astype("float64")}, index=batch.index)

    def keep(self, scores: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        low = scores["edu_score"] < self.threshold  # NaN (not scored) compares False: not rejected here
        reason = pd.Series("", index=scores.index, dtype=object)
        reason[low] = "quality:low_edu_score"
        return ~low, reason
