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


# The same rules in RE2 (Arrow), for a whole batch at once: Python's `re` visits every character in
# the interpreter; RE2 scans the batch in C++, and only the texts that need a change
# (a control character, a run of spaces that is not one plain space, a space at a line's end, two
# blank lines) are rewritten.
_RE2_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
# Python's whitespace (str.isspace) but newline and space; the controls among it are gone by then
_RE2_ODD_SPACE = r"[\t\x0b\x0c\r\x1c-\x1f\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
_RE2_SPACE = _RE2_ODD_SPACE[:-1] + " ]"
_RE2_CHANGES = f"{_RE2_CONTROL}|{_RE2_SPACE}{{2,}}|{_RE2_ODD_SPACE}| \n|\n |\n\n\n"
# Characters that stay as they are in NFC beside any others (starters that no composition takes as
# its second character, nor their decompositions): ASCII, Latin-1, Latin Extended-A/B, IPA, general
# punctuation, currency, arrows, maths; a text of only these is in NFC (a test checks them against
# the running Python's Unicode tables). An RE2 class, for Arrow.
NFC_STABLE = r"\x00-\x{2ff}\x{2002}-\x{20cf}\x{2190}-\x{22ff}"


def arrow_texts(texts: Iterable[Any]) -> pa.Array | None:
    """``texts`` as an Arrow large_string array, non-strings as ``""``; ``None`` when a text holds a
    lone surrogate (JSON's "\\ud800"), which Arrow cannot hold. An Arrow array or an Arrow-backed
    Series converts without a Python object per text."""
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        arr = texts.cast(pa.large_string())
    elif isinstance(texts, pd.Series) and isinstance(texts.dtype, pd.StringDtype) and texts.dtype.storage == "pyarrow":
        arr = pa.array(texts, type=pa.large_string())
    else:
        try:
            arr = pa.array([t if isinstance(t, str) else None for t in texts], type=pa.large_string())
        except UnicodeEncodeError:
            return None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return pc.fill_null(arr, "") if arr.null_count else arr


def utf8_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)`` of a large_string array, no copy: text ``i`` is ``data[offsets[i]:offsets[i + 1]]``."""
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    return offsets, np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, dtype=np.uint8)


def _texts_with(arr: pa.Array, byte: int) -> np.ndarray:
    """Positions of the texts of ``arr`` (large_string) that hold ``byte``: one scan of the bytes."""
    offsets, data = utf8_buffers(arr)
    at = np.flatnonzero(data[offsets[0]:offsets[-1]] == byte) + offsets[0]
    return np.unique(np.searchsorted(offsets, at, side="right") - 1)


def _ends_with_blank(arr: pa.Array) -> np.ndarray:
    """Positions of the texts of ``arr`` (large_string) that start or end with a space or newline."""
    offsets, data = utf8_buffers(arr)
    some = np.flatnonzero(offsets[1:] > offsets[:-1])
    first, last = data[offsets[some]], data[offsets[some + 1] - 1]
    return some[(first == 32) | (first == 10) | (last == 32) | (last == 10)]


def _replace(arr: pa.Array, where: np.ndarray, step: Any) -> pa.Array:
    """``arr`` with the texts at positions ``where`` replaced by ``step`` of them."""
    if not len(where):
        return arr
    mask = np.zeros(len(arr), dtype=bool)
    mask[where] = True
    return pc.replace_with_mask(arr, pa.array(mask), step(arr.take(where)))


def normalize_texts(texts: Iterable[Any], form: Literal["NFC", "NFKC"] = "NFC") -> pd.Series:
    """``normalize_text`` of every text of a batch, equal to it text by text, as a Series of ``str``.

    Every step finds the texts it changes over the whole batch at once and rewrites only those, in
    Arrow (the Unicode form in Python); a batch with lone surrogates (which Arrow cannot hold) goes
    text by text.
    """
    arr = arrow_texts(texts)
    if arr is None:
        return pd.Series([normalize_text(t, form) for t in texts], dtype=object)
    arr = _replace(arr, _texts_with(arr, ord("\r")),
                   lambda part: pc.replace_substring(pc.replace_substring(part, "\r\n", "\n"), "\r", "\n"))
    # Only a text with a character outside NFC_STABLE (NFC) or outside ASCII (NFKC) can change; most of
    # those are in the form already, which Python's quick check says sooner than Arrow's
    # utf8_normalize rewrites them (and Arrow's NFKC tables are newer than Python's)
    maybe = pc.match_substring_regex(arr, f"[^{NFC_STABLE}]") if form == "NFC" else pc.invert(pc.string_is_ascii(arr))
    maybe = np.flatnonzero(maybe.to_numpy(zero_copy_only=False))
    changed = [i for i in maybe.tolist() if not unicodedata.is_normalized(form, arr[i].as_py())]
    arr = _replace(arr, np.array(changed, dtype=np.int64),
                   lambda part: pa.array([unicodedata.normalize(form, t) for t in part.to_pylist()],
                                         type=pa.large_string()))

    def rewrite(part: pa.Array) -> pa.Array:
        part = pc.replace_substring_regex(part, _RE2_CONTROL, "")
        part = pc.replace_substring_regex(part, f"{_RE2_SPACE}{{2,}}|{_RE2_ODD_SPACE}", " ")  # runs: one space
        part = pc.replace_substring_regex(part, " \n ?|\n ", "\n")  # lines stripped of that space
        return pc.replace_substring_regex(part, "\n{3,}", "\n\n")

    arr = _replace(arr, np.flatnonzero(pc.match_substring_regex(arr, _RE2_CHANGES).to_numpy(zero_copy_only=False)),
                   rewrite)
    return _replace(arr, _ends_with_blank(arr), lambda part: pc.utf8_trim(part, " \n")).to_pandas()


def utf8_sizes(texts: Iterable[Any]) -> np.ndarray:
    """int64 UTF-8 bytes of each text (a lone surrogate counts its 3 bytes; non-strings 0)."""
    arr = arrow_texts(texts)
    if arr is None:
        return np.array([len(t.encode("utf-8", "surrogatepass")) if isinstance(t, str) else 0 for t in texts],
                        dtype=np.int64)
    return pc.binary_length(arr).to_numpy().astype(np.int64)


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
