"""The language filter: CLD3 from the installed wheel scores `language` and `language_score`;
`keep` takes configured languages at or above a threshold (FineWeb's defaults: English, 0.65)."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from filters.base import TEXT
from filters.language import LANGUAGE, LANGUAGE_SCORE, LanguageFilter, _identifier, identify_language

ENGLISH = (
    "Photosynthesis is the process by which green plants use sunlight to turn water and carbon dioxide "
    "into sugar and oxygen. It takes place mostly in the leaves, inside small structures called "
    "chloroplasts.\nWithout it there would be no oxygen in the air we breathe, and almost every food "
    "chain on Earth would collapse within a few weeks."
)
GERMAN = (
    "Die Photosynthese ist der Vorgang, bei dem grüne Pflanzen mit Hilfe von Sonnenlicht aus Wasser und "
    "Kohlendioxid Zucker und Sauerstoff herstellen. Sie findet vor allem in den Blättern statt, in "
    "kleinen Bausteinen, die man Chloroplasten nennt.\nOhne sie gäbe es keinen Sauerstoff in der Luft."
)
FRENCH = (
    "La photosynthèse est le processus par lequel les plantes vertes utilisent la lumière du soleil pour "
    "transformer l'eau et le dioxyde de carbone en sucre et en oxygène. Elle a lieu surtout dans les "
    "feuilles, à l'intérieur de petites structures appelées chloroplastes.\nSans elle, il n'y aurait pas "
    "d'oxygène dans l'air que nous respirons."
)
HEBREW = "הפוטוסינתזה היא התהליך שבו צמחים ירוקים משתמשים באור השמש כדי להפוך מים ופחמן דו-חמצני לסוכר."


def batch(*texts: object, index: list[int] | None = None) -> pd.DataFrame:
    return pd.DataFrame({TEXT: list(texts)}, index=index)


@pytest.mark.parametrize(("text", "code"), [(ENGLISH, "en"), (GERMAN, "de"), (FRENCH, "fr")])
def test_a_paragraph_gets_its_iso_code_with_a_confident_score(text: str, code: str) -> None:
    language, score = identify_language(text)
    assert language == code
    assert 0.9 < score <= 1.0


def test_hebrew_gets_its_current_iso_code_not_cld3s_old_one() -> None:
    assert identify_language(HEBREW)[0] == "he"
    assert LanguageFilter(languages=["iw"]).languages == ["he"]


@pytest.mark.parametrize("text", ["", "   \n\t \n", "12 345 -- !!! 2024", None, float("nan"), 42])
def test_empty_whitespace_and_non_text_are_undetermined_with_score_zero(text: object) -> None:
    assert identify_language(text) == ("und", 0.0)


def test_a_document_is_scored_as_one_line() -> None:
    assert identify_language(GERMAN) == identify_language(GERMAN.replace("\n", " "))
    assert identify_language("  Die Katze schläft\n\n\nauf dem Sofa.  ") == identify_language("Die Katze schläft auf dem Sofa.")


def test_a_lone_surrogate_does_not_raise() -> None:
    assert identify_language(ENGLISH + "\ud800")[0] == "en"


def test_a_batch_in_gives_both_columns_out_indexed_like_the_batch() -> None:
    scores = LanguageFilter().score(batch(ENGLISH, GERMAN, FRENCH, "", index=[7, 3, 9, 1]))
    assert list(scores.columns) == [LANGUAGE, LANGUAGE_SCORE]
    assert list(scores.index) == [7, 3, 9, 1]
    assert scores[LANGUAGE].tolist() == ["en", "de", "fr", "und"]
    assert scores[LANGUAGE_SCORE].dtype == np.float64
    assert scores[LANGUAGE_SCORE].iloc[3] == 0.0
    assert LanguageFilter().score(batch()).empty


def test_defaults_are_finewebs_english_at_065() -> None:
    f = LanguageFilter()
    assert f.languages == ["en"] and f.min_score == 0.65 and f.enabled
    mask, reason = f.keep(f.score(batch(ENGLISH, GERMAN, FRENCH, " ")))
    assert mask.tolist() == [True, False, False, False]
    assert reason.tolist() == ["", "language:de", "language:fr", "language:und"]


def test_configured_languages_are_kept_and_the_others_rejected_with_their_code() -> None:
    f = LanguageFilter(languages=["de", "fr"])
    mask, reason = f.keep(f.score(batch(ENGLISH, GERMAN, FRENCH)))
    assert mask.tolist() == [False, True, True]
    assert reason.tolist() == ["language:en", "", ""]


def test_no_languages_keeps_any_language_above_the_threshold() -> None:
    f = LanguageFilter(languages=[])
    scores = pd.DataFrame({LANGUAGE: ["en", "de", "und"], LANGUAGE_SCORE: [0.9, 0.7, 0.0]})
    assert f.keep(scores)[1].tolist() == ["", "", "language:low_score"]


def test_a_kept_language_below_min_score_is_rejected_as_low_score() -> None:
    scores = pd.DataFrame({LANGUAGE: ["en", "en", "en", "de"], LANGUAGE_SCORE: [0.64, 0.65, 0.99, 0.3]})
    mask, reason = LanguageFilter(min_score=0.65).keep(scores)
    assert mask.tolist() == [False, True, True, False]
    assert reason.tolist() == ["language:low_score", "", "", "language:de"]
    # the threshold is a keep-time parameter: the same scores, a new decision, nothing rescored
    assert LanguageFilter(min_score=0.5).keep(scores)[0].tolist() == [True, True, True, False]
    assert LanguageFilter(min_score=0.5).score_key() == LanguageFilter(min_score=0.9).score_key()


def test_rows_not_scored_are_not_rejected_here() -> None:
    scores = pd.DataFrame({LANGUAGE: [None, "en"], LANGUAGE_SCORE: [np.nan, 0.99]})
    mask, reason = LanguageFilter().keep(scores)
    assert mask.tolist() == [True, True] and reason.tolist() == ["", ""]


def test_apply_splits_a_batch_and_records_the_reason() -> None:
    kept, rejected = LanguageFilter().apply(batch(ENGLISH, GERMAN))
    assert kept[TEXT].tolist() == [ENGLISH] and kept[LANGUAGE].tolist() == ["en"]
    assert rejected["filter_reason"].tolist() == ["language:de"]


def test_parameters_are_validated() -> None:
    with pytest.raises(ValidationError):
        LanguageFilter(min_score=1.5)
    with pytest.raises(ValidationError):
        LanguageFilter(languages=[" "])
    with pytest.raises(ValidationError):
        LanguageFilter(threshold=0.5)  # not a field: a typo is an error, not a no-op


def test_the_score_key_names_the_model() -> None:
    key = LanguageFilter().score_key()
    assert key["filter"] == "language" and key["model"].startswith("cld3-py ")


def test_the_model_is_made_once_per_thread_and_reused() -> None:
    assert _identifier() is _identifier()
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(_identifier()))
    thread.start()
    thread.join()
    assert other[0] is not _identifier()


def test_threads_score_the_same_as_one_thread() -> None:
    texts = [ENGLISH, GERMAN, FRENCH, HEBREW] * 25
    expected = [identify_language(t) for t in texts]
    results: dict[int, list[tuple[str, float]]] = {}

    def run(k: int) -> None:
        results[k] = [identify_language(t) for t in texts]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expected for r in results.values())
