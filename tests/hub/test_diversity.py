"""Diversity metrics expose collapsed generations: repeated openings, repeated n-grams, near-copies."""

from __future__ import annotations

import pytest

from pipeline.hub.diversity import (
    compression_ratio,
    distinct_n,
    diversity_report,
    self_bleu_lite,
    top_opening,
    words,
)
from tests.conftest import SENTENCES


def test_distinct_n_counts_unique_ngrams_over_all_ngrams():
    tokenized = [words("the cat sat"), words("the cat ran")]
    assert distinct_n(tokenized, 1) == pytest.approx(4 / 6)
    assert distinct_n(tokenized, 2) == pytest.approx(3 / 4)
    assert distinct_n([], 2) == 0.0


def test_top_opening_finds_the_tinystories_collapse():
    stories = [f"Once upon a time, {s}" for s in SENTENCES[:6]] + SENTENCES[6:10]
    phrase, share = top_opening([words(t) for t in stories])
    assert phrase == "once upon a" and share == pytest.approx(0.6)


def test_repetitive_corpora_score_as_less_diverse():
    varied = SENTENCES
    copied = [SENTENCES[0]] * len(SENTENCES)
    assert compression_ratio(copied) > 2 * compression_ratio(varied)
    assert self_bleu_lite([words(t) for t in copied]) == pytest.approx(1.0)
    assert self_bleu_lite([words(t) for t in varied]) < 0.5
    report = diversity_report(varied)
    assert report["documents"] == len(varied) and 0 < report["distinct_2"] <= 1
    assert diversity_report(copied)["distinct_3"] < report["distinct_3"]
