"""The ``edu_score`` filter: the fastText educational-value classifier as a score/keep Filter."""

from __future__ import annotations

from typing import ClassVar

import pandas as pd

from filters.base import TEXT, Filter
from filters.quality import load_edu_classifier


class EduScore(Filter):
    """Score ``edu_score`` in [0, 1] with the model at ``model``; keep ``edu_score >= threshold``.

    The model is loaded once per process (once per Dask worker). A percentile threshold
    (keep the top X%) is resolved over the whole corpus by the caller, then set here.
    """

    name: ClassVar[str] = "quality"
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
