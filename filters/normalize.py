"""Unicode/whitespace normalisation and document length bounds.

Normalisation runs before every other filter, so exact dedup hashes and n-gram matches see
one canonical form of a text (NFC composed characters, one kind of space, no trailing blanks).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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


# The same rules in RE2 (Arrow), for a whole batch at once: Python's `re` visits every character of
# 40 MB of text at ~50 ns each (3 s); RE2 scans it in C++, and only the texts that need a change
# (a control character, a run of spaces that is not one plain space, a space at a line's end, two
# blank lines) are rewritten.
_RE2_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
# Python's whitespace (str.isspace) but newline and space; the controls among it are gone by then
_RE2_ODD_SPACE = r"[\t\x0b\x0c\r\x1c-\x1f\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
_RE2_SPACE = _RE2_ODD_SPACE[:-1] + " ]"
_RE2_CHANGES = f"{_RE2_CONTROL}|{_RE2_SPACE}{{2,}}|{_RE2_ODD_SPACE}| \n|\n |\n\n\n"


def normalize_texts(texts: Iterable[Any], form: Literal["NFC", "NFKC"] = "NFC") -> list[str]:
    """``normalize_text`` of every text of a batch, equal to it text by text; the regex steps run
    over the whole batch in Arrow (a batch with lone surrogates, which Arrow cannot hold, text by text)."""
    values = [unicodedata.normalize(form, t.replace("\r\n", "\n").replace("\r", "\n"))
              if isinstance(t, str) else "" for t in texts]
    try:
        arr = pa.array(values, type=pa.large_string())
    except UnicodeEncodeError:
        return [normalize_text(t, form) for t in values]
    change = np.flatnonzero(pc.match_substring_regex(arr, _RE2_CHANGES).to_numpy(zero_copy_only=False))
    if len(change):
        part = pc.replace_substring_regex(arr.take(change), _RE2_CONTROL, "")
        part = pc.replace_substring_regex(part, f"{_RE2_SPACE}{{2,}}|{_RE2_ODD_SPACE}", " ")  # runs: one space
        part = pc.replace_substring_regex(part, " \n ?|\n ", "\n")  # lines stripped of that space
        part = pc.replace_substring_regex(part, "\n{3,}", "\n\n")
        for i, text in zip(change.tolist(), part.to_pylist(), strict=True):
            values[i] = text
        arr = pa.array(values, type=pa.large_string())
    return pc.utf8_trim(arr, " \n").to_pylist()


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
