"""Heuristic filters: published defaults, reasons that name the rule, scores kept as columns."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from filters.base import Filter
from filters.heuristics import C4Lines, FineWebQuality, GopherQuality, GopherRepetition, repeated_ngram_chars
from filters.normalize import LengthBounds, normalize_text
from tests.filters.corpus import documents

GOOD = documents(20, seed=1)


def frame(*texts: str) -> pd.DataFrame:
    return pd.DataFrame({"text": list(texts)})


def reasons(f: Filter, *texts: str) -> list[str]:
    return f.keep(f.score(frame(*texts)))[1].tolist()


@pytest.mark.parametrize("f", [GopherQuality(), GopherRepetition(), C4Lines(), FineWebQuality()])
def test_ordinary_prose_passes_every_heuristic_with_published_defaults(f: Filter) -> None:
    mask, reason = f.keep(f.score(frame(*GOOD)))
    assert mask.all(), reason[~mask].tolist()


def test_published_defaults() -> None:
    g, r, c, w = GopherQuality(), GopherRepetition(), C4Lines(), FineWebQuality()
    assert (g.min_doc_words, g.max_doc_words, g.max_symbol_word_ratio, g.min_stop_words) == (50, 100_000, 0.1, 2)
    assert r.top_n_grams == {2: 0.2, 3: 0.18, 4: 0.16} and r.dup_n_grams[5] == 0.15 and r.dup_line_frac == 0.3
    assert (c.min_num_sentences, c.min_words_per_line, c.max_word_length) == (5, 3, 1000)
    assert (w.line_punct_thr, w.short_line_thr, w.char_duplicates_ratio, w.new_line_ratio) == (0.12, 0.67, 0.01, 0.3)


def test_gopher_quality_names_the_failed_rule() -> None:
    no_stop_words = " ".join(["photosynthesis converts sunlight into chemical energy inside green leaves"] * 8)
    hashtags = " ".join(f"#tag{i} word" for i in range(40)) + " the cat and the dog."
    assert reasons(GopherQuality(), "Too short to be a page.", no_stop_words, hashtags) == [
        "gopher:too_few_words", "gopher:stop_words", "gopher:symbols"]


def test_gopher_repetition_catches_repeated_lines_and_ngrams() -> None:
    lines = "\n".join(["Click here to subscribe to our newsletter today."] * 10)
    assert reasons(GopherRepetition(), lines, GOOD[0])[0].startswith("gopher_rep:dup_")
    assert reasons(GopherRepetition(), GOOD[0]) == [""]


def test_c4_counts_sentences_only_in_lines_it_would_keep() -> None:
    menu = "\n".join(["Home", "About us", "Contact", "Privacy policy and terms of use apply here."] * 3)
    code = GOOD[0] + "\nconfig = {'a': 1}"
    assert reasons(C4Lines(), menu, code, "lorem ipsum " + GOOD[1]) == [
        "c4:too_few_sentences", "c4:curly_bracket", "c4:lorem_ipsum"]
    assert reasons(C4Lines(filter_curly_bracket=False), code) == [""]


def test_fineweb_ratios() -> None:
    listing = "\n".join(f"item {i}" for i in range(60))
    assert reasons(FineWebQuality(), listing) == ["fineweb:line_punct"]
    scores = FineWebQuality().score(frame(GOOD[0]))
    assert scores.loc[0, "fw_line_punct"] == 1.0 and scores.loc[0, "fw_dup_chars"] == 0.0


def test_thresholds_change_without_rescoring() -> None:
    scores = GopherQuality().score(frame(*GOOD))
    assert GopherQuality().keep(scores)[0].all()
    strict = GopherQuality(min_doc_words=10_000)
    assert not strict.keep(scores)[0].any()


def test_apply_splits_a_batch_into_kept_and_rejected_with_reasons() -> None:
    kept, rejected = GopherQuality().apply(frame(GOOD[0], "tiny"))
    assert kept.text.tolist() == [GOOD[0]] and "gopher_words" in kept
    assert rejected.filter_reason.tolist() == ["gopher:too_few_words"]


def test_normalisation_is_nfc_and_collapses_whitespace() -> None:
    assert normalize_text("Cafe\u0301\t  au\u00a0lait \r\n\n\n\nnext  ") == "Caf\u00e9 au lait\n\nnext"
    assert normalize_text(None) == "" and normalize_text("   ") == ""


def test_length_bounds_reject_empty_short_and_huge_documents() -> None:
    f = LengthBounds(min_chars=10, max_chars=1000)
    assert reasons(f, "", "short", "x" * 2000, "just right, long enough") == [
        "length:empty", "length:too_short", "length:too_long", ""]


def counted_repeats(tokens: list[str], n: int) -> tuple[int, int]:
    """The Gopher n-gram measures the plain way (as datatrove counts them): top n-gram chars x count
    (ties: the first seen), and chars of words covered by a repeat of an earlier n-gram."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0, 0
    gram, count = Counter(grams).most_common(1)[0]
    seen: set[tuple[str, ...]] = set()
    covered: set[int] = set()
    for i, g in enumerate(grams):
        if g in seen:
            covered.update(range(i, i + n))
        seen.add(g)
    return (len(" ".join(gram)) * count if count > 1 else 0), sum(len(tokens[i]) + 1 for i in covered)


def test_batched_ngram_repetition_equals_counting_each_document() -> None:
    docs = [t.lower().split() for t in GOOD[:8]]
    docs += [[], ["a"], ["a"] * 11, list("xyxyxyz"), list("bcdbcebcd")]
    sizes = [2, 3, 4, 5, 6, 10]
    got = repeated_ngram_chars(docs, top_sizes=sizes, dup_sizes=sizes)
    for n in (2, 3, 4, 5, 6, 10):
        expected = [counted_repeats(d, n) for d in docs]
        assert list(zip(got[n][0].tolist(), got[n][1].tolist(), strict=True)) == expected, n
