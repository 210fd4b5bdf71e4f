"""The ``language`` filter: language identification first, as datatrove and FineWeb do.

The model is Google's CLD3 (Compact Language Detector v3), compiled into the ``cld3-py`` wheel
(import name ``gcld3``): nothing is downloaded at run time. FineWeb's fastText lid.176 ships in
PyPI packages only next to a ``fasttext`` module that would replace this project's own; on web
pages CLD3 agrees with lid.176 on 99.4% of documents and is faster (``bench/language.py``).
mC4 chose CLD3 for the same job (keep a page whose language probability is >= 0.7).

A document is scored as one line (newlines become spaces, as fastText-style models expect):
``language`` is an ISO 639-1 code (``en``, ``de``; romanised text gets a script suffix such as
``zh-Latn``; ``und`` for text without letters) and ``language_score`` the model's probability.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from importlib.metadata import version
from typing import Any, ClassVar

import pandas as pd
from pydantic import Field, field_validator

from filters.base import TEXT, Filter

LANGUAGE = "language"
LANGUAGE_SCORE = "language_score"
UNDETERMINED = "und"
MAX_BYTES = 100_000
"""UTF-8 bytes of a document the model reads (a prefix): bounds the cost of a 10 MB page."""

_ISO_639_1 = {"iw": "he"}  # CLD3 still says "iw" for Hebrew
_LOCAL = threading.local()


def _identifier() -> Any:
    """The CLD3 identifier of this thread, made once and reused for every later batch.

    The wheel releases the GIL while it scores, so Dask worker threads score in parallel; one
    identifier per thread keeps them from sharing its scratch state.
    """
    found = getattr(_LOCAL, "identifier", None)
    if found is None:
        import gcld3  # here, not at import: `import filters.language` stays cheap

        # min_num_bytes=1: text without letters (empty, digits, punctuation) is "und", not a guess
        found = _LOCAL.identifier = gcld3.NNetLanguageIdentifier(min_num_bytes=1, max_num_bytes=MAX_BYTES)
    return found


def identify_language(text: Any) -> tuple[str, float]:
    """``(ISO code, probability)`` of the most likely language of ``text``.

    Contract: never raises. ``None``/NaN/non-text and text without letters give ``("und", 0.0)``.
    """
    codes, scores = identify_languages([text])
    return codes[0], scores[0]


def identify_languages(texts: Iterable[Any]) -> tuple[list[str], list[float]]:
    """``identify_language`` of each text: the ISO codes and the probabilities, in one loop over the
    model's calls (the Python work of a call is a tenth of the model's)."""
    find = _identifier().FindLanguage
    codes: list[str] = []
    scores: list[float] = []
    for text in texts:
        # one line: newlines and runs of blanks become one space
        line = " ".join(text[:MAX_BYTES].split()) if isinstance(text, str) else ""
        if not line:
            codes.append(UNDETERMINED)
            scores.append(0.0)
            continue
        try:
            found = find(text=line)
        except TypeError:  # the binding cannot encode a lone surrogate (JSON "\ud800"): as U+FFFD
            found = find(text=line.encode("utf-8", errors="replace").decode("utf-8"))
        language = found.language
        if language == UNDETERMINED:
            codes.append(UNDETERMINED)
            scores.append(0.0)
        else:
            codes.append(_ISO_639_1.get(language, language))
            scores.append(float(found.probability))
    return codes, scores


class LanguageFilter(Filter):
    """Score ``language`` and ``language_score``; keep documents in ``languages`` scored >= ``min_score``.

    Defaults are FineWeb's: English only, score >= 0.65. A document in another language is
    rejected as ``language:<code>`` (``language:de``, ``language:und``), one in a kept language
    but below the threshold as ``language:low_score``.
    """

    name: ClassVar[str] = "language"
    stage: ClassVar[str] = "language"
    reasons: ClassVar[tuple[str, ...]] = ("language:low_score", "language:*")
    score_fields: ClassVar[tuple[str, ...]] = ()

    languages: list[str] = ["en"]
    """ISO 639-1 codes to keep (``zh-Latn`` for romanised Chinese); empty keeps every language."""
    min_score: float = Field(0.65, ge=0.0, le=1.0)
    """Lowest ``language_score`` kept (FineWeb: 0.65 with fastText lid.176)."""
    apply_to_generated: bool = False
    """Generated text is in the language its prompts asked for; its scores are kept either way."""

    @field_validator("languages")
    @classmethod
    def _codes(cls, value: list[str]) -> list[str]:
        codes = [_ISO_639_1.get(c.strip(), c.strip()) for c in value]
        if not all(codes):
            raise ValueError("a language code is empty")
        return codes

    def score_key(self) -> dict[str, Any]:
        # the scores are the model's: a new cld3-py release may move them
        return {**super().score_key(), "model": f"cld3-py {version('cld3-py')}", "max_bytes": MAX_BYTES}

    def score(self, batch: pd.DataFrame) -> pd.DataFrame:
        codes, scores = identify_languages(batch[TEXT])
        return pd.DataFrame({
            LANGUAGE: pd.Series(codes, index=batch.index, dtype=object),
            LANGUAGE_SCORE: pd.Series(scores, index=batch.index, dtype="float64"),
        })

    def keep(self, scores: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        scored = scores[LANGUAGE_SCORE].notna()  # NaN: not scored here, so not rejected here
        language = scores[LANGUAGE].astype(object)
        other = scored & ~language.isin(self.languages) if self.languages else pd.Series(False, index=scores.index)
        low = scored & ~other & (scores[LANGUAGE_SCORE] < self.min_score)
        reason = pd.Series("", index=scores.index, dtype=object)
        reason[other] = "language:" + language[other].astype(str)
        reason[low] = "language:low_score"
        return reason == "", reason
