"""The card's extra diversity metrics expose collapsed generations: repeated n-grams and near-copies.

distinct-n, the opening share and the near-duplicate rate are generate's (tested in tests/generate).
"""

from __future__ import annotations

import pytest

from pipeline.generate.diversity import diversity_report, words
from pipeline.hub.text_stats import card_metrics, compression_ratio, full_report, self_bleu_lite
from tests.conftest import SENTENCES


def test_repetitive_corpora_compress_better():
    copied = [SENTENCES[0]] * len(SENTENCES)
    assert compression_ratio(copied) > 2 * compression_ratio(SENTENCES)
    assert compression_ratio([]) == 0.0


def test_self_bleu_lite_is_one_for_copies_and_low_for_distinct_texts():
    assert self_bleu_lite([words(t) for t in [SENTENCES[0]] * 5]) == pytest.approx(1.0)
    assert self_bleu_lite([words(t) for t in SENTENCES]) < 0.5
    # a text shares its opening words with the others: only its shared 1-2-grams count
    assert 0 < self_bleu_lite([words(f"Once upon a time {s}") for s in SENTENCES]) < 0.5
    assert self_bleu_lite([words(SENTENCES[0])]) == 0.0


def test_the_full_report_is_generates_report_plus_the_card_metrics():
    texts = [f"Once upon a time, {s}" for s in SENTENCES]
    report = full_report(texts)
    assert report == {**diversity_report(texts), **card_metrics(texts)}
    assert report["top_opening"] == "once upon a" and report["top_opening_share"] == 1.0


def test_self_bleu_runs_on_a_seeded_sample():
    texts = [f"{s} {i}" for i in range(30) for s in SENTENCES[:2]]
    assert card_metrics(texts, self_bleu_sample=10, seed=1) == card_metrics(texts, self_bleu_sample=10, seed=1)
    assert card_metrics(texts, self_bleu_sample=10)["compression_ratio"] == card_metrics(texts)["compression_ratio"]
