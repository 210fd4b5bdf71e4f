"""Unicode/whitespace normalisation and document length bounds.

Normalisation runs before every other filter, so exact dedup hashes and n-gram matches see
one canonical form of a text (NFC composed characters, one kind of space, no trailing blanks).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, ClassVar, Literal

import pandas as pd

from filters.base import TEXT, Filter, first_failure

_SPACES = re.compile(r"[^\S\n]+")  # any whitespace except newline, incl. tabs and NBSP
_BLANK_LINES = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def normalize_text(text: Any, form: Literal["NFC", "NFKC"] = "NFC") -> str:
    """The canonical form of a document: Unicode ``form``, single spaces, at most one blank line.

    ``None`` and non-strings become ``""``; ``\\r\\n`` becomes ``\\n``; control characters go.
    """
    if not isinstance(text, str) or not text:
        return ""
    text = unicodedata.normalize(form, text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


class LengthBounds(Filter):
    """Reject empty, too short and too long documents (by characters, after normalisation)."""

    name: ClassVar[str] = "length"
    stage: ClassVar[str] = "normalize"
    reasons: ClassVar[tuple[str, ...]] = ("length:empty", "length:too_short", "length:too_long")
    score_fields: ClassVar[tuple[str, ...]] = ()

    form: Literal["NFC", "NFKC"] = "NFC"
    min_chars: int = 100
    max_chars: int = 1_000_000

    def score(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"n_chars": batch[TEXT].str.len().fillna(0).astype("int64")}, index=batch.index)

    def keep(self, scores: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        return first_failure(scores, [
            ("length:empty", lambda s: s.n_chars == 0),
            ("length:too_short", lambda s: s.n_chars < self.min_chars),
            ("length:too_long", lambda s: s.n_chars > self.max_chars),
        ])
