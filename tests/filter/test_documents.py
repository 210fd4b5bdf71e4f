"""pipeline.filter.documents: a keep_top fraction as a corpus-wide edu_score threshold."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ClassifierError
from pipeline.filter.documents import percentile_threshold

# --- percentile thresholds ---------------------------------------------------------------------

@pytest.mark.parametrize("keep_top", [0.01, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_percentile_threshold_keeps_the_top_fraction(keep_top):
    scores = np.random.default_rng(1).random(10_000).astype(np.float32)
    t = percentile_threshold(scores, keep_top)
    assert (scores >= t).sum() == int(np.ceil(keep_top * scores.size))


def test_percentile_threshold_edge_cases():
    assert percentile_threshold([0.2, 0.9, 0.5, 0.7], 0.5) == pytest.approx(0.7)
    assert percentile_threshold([0.3, 0.1], 1.0) == pytest.approx(0.1)
    assert percentile_threshold([0.4, 0.4, 0.4, 0.1], 0.25) == pytest.approx(0.4)  # ties keep more
    assert percentile_threshold([float("nan"), 0.8, 0.2], 0.5) == pytest.approx(0.8)  # NaN ignored
    assert percentile_threshold(iter([0.1, 0.6]), 0.5) == pytest.approx(0.6)
    assert percentile_threshold([], 0.3) == float("inf")
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ClassifierError, match="keep_top"):
            percentile_threshold([0.5], bad)
