"""pipeline.classify.report: the classifier's held-out metrics, checked against their definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.classify.report import average_precision, evaluate_scores, roc_auc, spearman

# --- metrics: checked against their definitions -------------------------------------------------

def test_roc_auc_is_the_pairwise_win_rate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)  # many ties
    pairs = [(p, n) for p, n in itertools.product(s[y == 1], s[y == 0])]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(y, s) == pytest.approx(expected)


def test_average_precision_and_spearman_on_known_cases():
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.1])
    assert average_precision(y, s) == pytest.approx((1.0 + 2 / 3) / 2)
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([10, 20, 30, 40.0])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([4, 3, 2, 1.0])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.array([1, 1, 1.0]), np.array([1, 2, 3.0])))


def test_evaluate_scores_reports_the_confusion_matrix_at_the_threshold():
    m = evaluate_scores([1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.8], threshold=0.5, llm_scores=[5, 3, 2, 0, 4])
    assert m["confusion_matrix"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 2}
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(5 / 6)
    assert m["spearman_vs_llm"] == pytest.approx(0.9)
    one_class = evaluate_scores([1, 1], [0.2, 0.9])
    assert one_class["roc_auc"] is None and one_class["best_f1"] is None
