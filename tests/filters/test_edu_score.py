"""filters.edu_score: fastText normalisation, the scoring contract, one-line load errors, the per-process cache."""

from __future__ import annotations

import random

import numpy as np
import pytest

from filters.base import ModelError
from filters.edu_score import MAX_CHARS, EduClassifier, load_edu_classifier, normalize_for_fasttext
from pipeline.classify.report import roc_auc
from pipeline.classify.train import TrainParams, train_fasttext
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
    with pytest.raises(ModelError, match="not found"):
        EduClassifier.load(tmp_path / "missing.bin")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a fastText model"):
        EduClassifier.load(junk)


def test_wrong_positive_label_is_refused(classifier):
    with pytest.raises(ModelError, match="__label__hq"):
        EduClassifier.load(classifier.path, positive_label="__label__hq")


def test_load_edu_classifier_is_cached_per_process(classifier):
    first = load_edu_classifier(classifier.path)
    assert load_edu_classifier(classifier.path) is first
