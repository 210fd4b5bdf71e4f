"""filters.quality: normalisation, scoring contract, metrics and percentile thresholds."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from filters.quality import (
    MAX_CHARS,
    EduClassifier,
    TrainParams,
    average_precision,
    evaluate_scores,
    load_edu_classifier,
    normalize_for_fasttext,
    percentile_threshold,
    roc_auc,
    spearman,
    train_fasttext,
)
from pipeline.errors import ClassifierError
from tests.classify.conftest import make_corpus, make_document


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> EduClassifier:
    corpus = make_corpus(800, seed=1)
    model, _ = train_fasttext([normalize_for_fasttext(t) for t in corpus["text"]],
                           (corpus["score"] >= 3).astype(int).tolist(), TrainParams(threads=1, dim=32, bucket=100_000))
    path = tmp_path_factory.mktemp("model") / "edu.bin"
    model.save_model(str(path))
    return EduClassifier.load(path)


def test_normalize_makes_one_lowercase_line_and_strips_labels():
    text = "Photosynthesis,\nin PLANTS!\r\n__label__edu\tturns light\x00 into sugar."
    line = normalize_for_fasttext(text)
    assert line == "photosynthesis , in plants ! edu turns light into sugar ."
    assert "\n" not in line and "__label__" not in line
    assert normalize_for_fasttext(line) == line  # idempotent: training and scoring agree


@pytest.mark.parametrize("bad", [None, float("nan"), 42, "", "   \n\t ", b"\xff\xfe caf\xc3\xa9", "x\udcff y"])
def test_normalize_never_raises(bad):
    line = normalize_for_fasttext(bad)
    assert isinstance(line, str) and "\n" not in line
    line.encode("utf-8")  # always encodable for fastText


def test_normalize_truncates_huge_documents():
    assert len(normalize_for_fasttext("word " * 3_000_000).split()) == MAX_CHARS // 5


def test_scores_are_float32_probabilities_ranking_lessons_above_spam(classifier):
    rng = random.Random(99)  # unseen documents from the same generator
    lessons = [make_document(True, rng) for _ in range(100)]
    spam = [make_document(False, rng) for _ in range(100)]
    scores = classifier.score(lessons + spam)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and scores.shape == (200,)
    assert np.all((scores >= 0) & (scores <= 1))
    assert roc_auc(np.r_[np.ones(100), np.zeros(100)].astype(int), scores) > 0.9
    assert np.median(scores[:100]) > 0.5 > np.median(scores[100:])


def test_bad_documents_score_without_crashing(classifier):
    huge = "The water cycle moves water between oceans, air and land. " * 180_000  # ~10 MB
    texts = [None, "", " \n ", b"\xff\xfe broken bytes", "surrogate \udcff text", huge, 3.5]
    scores = classifier.score(texts)
    assert scores.shape == (7,)
    assert scores[:3].tolist() == [0.0, 0.0, 0.0] and scores[6] == 0.0
    assert np.all((scores >= 0) & (scores <= 1))
    assert scores[5] > 0.5  # truncated, still recognised as a lesson
    assert classifier.score([]).shape == (0,)


def test_batched_scores_match_one_at_a_time(classifier):
    texts = make_corpus(30, seed=5)["text"].tolist()
    batched = classifier.score(texts)
    single = np.array([classifier.score([t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, rtol=1e-6)


def test_numpy_2_is_what_we_run_on():
    assert int(np.__version__.split(".")[0]) >= 2


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(ClassifierError, match="not found"):
        EduClassifier.load(tmp_path / "missing.bin")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ClassifierError, match="not a fastText model"):
        EduClassifier.load(junk)


def test_wrong_positive_label_is_refused(classifier):
    with pytest.raises(ClassifierError, match="__label__hq"):
        EduClassifier.load(classifier.path, positive_label="__label__hq")


def test_load_edu_classifier_is_cached_per_process(classifier):
    first = load_edu_classifier(classifier.path)
    assert load_edu_classifier(classifier.path) is first


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
