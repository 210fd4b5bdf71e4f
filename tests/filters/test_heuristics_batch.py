"""The heuristics measured over a batch's bytes give the scores, hence the decisions, of the per-document
implementation they replaced (kept verbatim in tests/filters/reference_heuristics.py as the oracle)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

import filters.heuristics as heuristics
from filters.heuristics import C4Lines, FineWebQuality, GopherQuality, GopherRepetition, score_heuristics
from filters.normalize import arrow_texts, normalize_texts
from filters.segments import Segments
from tests.filters import reference_heuristics as reference
from tests.filters.corpus import documents

# What web pages are made of, and the characters where Python's rules are easy to get wrong: Unicode
# whitespace, non-ASCII letters and digits, case maps that change length or depend on context.
FRAGMENTS = [
    *documents(12, seed=7),
    "Home\nAbout us\nContact\nPrivacy Policy\nTerms of Use apply.\nWe use cookies to improve your experience.",
    "Please enable JavaScript in your browser to see this page. It is required for the map.",
    "• first point\n• second point\n- third point\n* fourth point\n· fifth\n– sixth\n● seventh\n‣ eighth",
    "And then...\nHe waited…\nNothing happened.....\nStill nothing . . .\nWhat?!\n",
    "#tag #another #more ### heading\n## subheading\n#hashtag...",
    "Paris is the capital of France.[1] It has many museums.[edit] Citation here[citation needed].\n"
    "[2] A line that starts with a citation.\n[EDIT]\n[Citation Needed] Only a citation. [12][13]",
    "function f() { return 1; }\nvar x = {a: 1};",
    "Lorem Ipsum dolor sit amet, consectetur adipiscing elit. LOREM IPSUM again.",
    "Über die Brücke gingen Ärzte und Öl-Händler. Die Straße war groß. ÄÖÜ äöü ß.\nDas ist gut!",
    "GROẞE STRAẞE",  # capital sharp s: its lowercase is narrower in UTF-8
    "İstanbul'da İyi bir gün. DİKKAT edin.",  # dotted capital I: two characters in lowercase
    "ΟΔΥΣΣΕΥΣ ΚΑΙ ΟΙ ΦΙΛΟΙ ΤΟΥ. Η ΘΑΛΑΣΣΑ ΗΤΑΝ ΗΣΥΧΗ.",  # final sigma: lowercase by context
    "Temperature 300 \u212a is cold for THE COOKIE POLICY \u212aeeper.",  # Kelvin sign lowercases to ASCII k
    "日本語の文章です。これはテストです！本当ですか？\n中文句子。",
    "Non\u00a0breaking\u00a0spaces and\u2003em\u2003spaces and\u3000ideographic and\ttabs\x0bvt\x0cff.",
    "Line one\r\nLine two\rLine three\x1cfile\x1dgroup\x1erecord\x1funit\x85next\u2028line\u2029para",
    "Numbers ١٢٣ ٤٥ and ²³ and ½ are digits of other kinds: 42, 3.14, 1e10.",
    "Emoji 😀😀 and 👍🏽 and combining e\u0301 and Å.",
    "She said \"stop.\" Then (quietly!) left. Really?) Yes.] Done.\". End?!\" ok.'",
    "a.b.c. d?e! f.)(. g?)? h]] i.] j.\"' k.x. l",
    "x" * 1200 + " long token line.",
    "word " * 30,
    "the the the the the the the the the the the the the the the the the the the the",
    "To be or not to be, that is the question. To be or not to be, that is the question.",
    "",
    "   \n\n  \t ",
    "single",
    "\n\n\nStarts with blank lines.\n\n\n\nAnd has\n\n\n\nmany breaks.\n\n",
    "Repeated line.\nRepeated line.\nRepeated line.\nUnique line.\n\nPara A\n\nPara A\n\nPara B",
    "UPPER CASE THE AND OF TO BE HAVE WITH THAT. The_underscore snake_case words_with_digits2.",
]


def fixture(n: int = 160, seed: int = 0) -> list[str]:
    """Documents joined from random fragments with random separators, some starting or ending without a
    space (adjacent texts in one buffer), some normalised as the filter stage does."""
    rng = random.Random(seed)
    out = list(FRAGMENTS)
    separators = ["\n", "\n\n", " ", "", "\n\n\n", "\r\n", " \n ", "\u00a0\n"]
    for _ in range(n):
        parts = rng.sample(FRAGMENTS, rng.randint(1, 5))
        text = "".join(p + rng.choice(separators) for p in parts)
        if rng.random() < 0.3:  # repetition, as boilerplate pages have
            text = text + "\n" + text[: rng.randint(0, len(text))]
        out.append(text)
    out += normalize_texts(out[:80]).tolist()
    return out


FIXTURE = fixture()
FILTERS = [(GopherQuality, reference.GopherQuality), (GopherRepetition, reference.GopherRepetition),
           (C4Lines, reference.C4Lines), (FineWebQuality, reference.FineWebQuality)]


@pytest.fixture(params=[1 << 20, 1500], ids=["one-segmentation", "many-segmentations"])
def split_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(heuristics, "_SPLIT_BYTES", request.param)
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize(("batched", "per_document"), FILTERS, ids=[f.name for f, _ in FILTERS])
def test_batch_scores_and_decisions_equal_the_per_document_implementation(batched, per_document,
                                                                          split_bytes: int) -> None:
    batch = pd.DataFrame({"text": FIXTURE}, index=np.arange(len(FIXTURE)) * 3 + 1)
    expected = per_document().score(batch)
    got = batched().score(batch)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert batched().keep(got)[1].tolist() == per_document().keep(expected)[1].tolist()
    assert (batched().keep(got)[1] != "").any() and (batched().keep(got)[1] == "").any()  # both kinds judged


def test_every_parameter_that_changes_a_score_changes_it_alike() -> None:
    batch = pd.DataFrame({"text": FIXTURE})
    for batched, per_document, params in [
        (C4Lines, reference.C4Lines, {"filter_no_terminal_punct": False, "min_words_per_line": 1,
                                      "max_word_length": 5, "filter_javascript": False, "filter_policy": False}),
        (FineWebQuality, reference.FineWebQuality, {"short_line_length": 5}),
        (GopherRepetition, reference.GopherRepetition, {"top_n_grams": {1: 0.5, 3: 0.1},
                                                        "dup_n_grams": {2: 0.1, 12: 0.1}}),
    ]:
        pd.testing.assert_frame_equal(batched(**params).score(batch), per_document(**params).score(batch),
                                      check_exact=True)


def test_one_segmentation_serves_all_four_filters() -> None:
    texts = pd.Series(FIXTURE)
    clock: dict[str, float] = {}
    together = score_heuristics([f() for f, _ in FILTERS], texts, clock)
    for (batched, _), got in zip(FILTERS, together, strict=True):
        pd.testing.assert_frame_equal(got, batched().score(texts.to_frame("text")), check_exact=True)
    assert set(clock) == {"segments", "gopher", "gopher_rep", "c4", "fineweb"}


def test_the_fixture_takes_both_paths() -> None:
    """Most texts are lowercased over the bytes; those with a case map that is not character for
    character of the same width go through the per-document rules, where lowercase is read."""
    exact = Segments(arrow_texts(FIXTURE)).lower_exact
    assert exact.mean() > 0.5 and not exact.all()
    assert not Segments(arrow_texts(["GROẞE", "İ", "ΟΔΥΣ", "\u212a"])).lower_exact.any()
    assert Segments(arrow_texts(["Über Straße", "Ελλάδα", "Москва"])).lower_exact.all()


def test_lone_surrogates_take_the_per_document_rules() -> None:
    batch = pd.DataFrame({"text": pd.Series(["bad \ud800 surrogate. " * 20, FIXTURE[0]], dtype=object)})
    for batched, per_document in FILTERS:
        pd.testing.assert_frame_equal(batched().score(batch), per_document().score(batch), check_exact=True)
