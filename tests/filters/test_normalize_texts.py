"""The batch normaliser is `normalize_text` applied text by text, whatever the whitespace and controls."""

from __future__ import annotations

import random
import re
import sys
import unicodedata

import pytest

from filters.normalize import NFC_STABLE, normalize_text, normalize_texts

# every kind of whitespace Python knows, controls, combining marks, and plain letters
PIECES = [" ", "  ", "\t", "\n", "\n\n", "\n\n\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u1680",
          "\u2003", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\x00", "\x08", "\x7f", "\u200b",
          "\ufeff", "\u180e", "a", "b", "é", "e\u0301", "ﬁ", "Ω"]


@pytest.mark.parametrize("form", ["NFC", "NFKC"])
def test_batch_normalisation_equals_the_per_text_one(form: str) -> None:
    rng = random.Random(7)
    texts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 16))) for _ in range(20_000)]
    texts += [f"A sentence. {t} Another one.\n" for t in texts[:5_000]] + [None, 3, "", "plain text"]
    assert normalize_texts(texts, form).tolist() == [normalize_text(t, form) for t in texts]


def test_a_lone_surrogate_is_normalised_text_by_text() -> None:
    texts = ["a\ud800  b", " x\t\ty "]
    assert normalize_texts(texts).tolist() == [normalize_text(t) for t in texts] == ["a\ud800 b", "x y"]


def _stable_chars() -> list[str]:
    """The characters of ``NFC_STABLE``, read from its RE2 ranges."""
    bounds = [int(h, 16) for h in re.findall(r"\\x\{?([0-9a-f]+)\}?", NFC_STABLE)]
    return [chr(c) for lo, hi in zip(bounds[::2], bounds[1::2], strict=True) for c in range(lo, hi + 1)]


def test_the_nfc_stable_characters_never_change_under_nfc() -> None:
    # a text of only these is skipped by the NFC step: each must be a starter in NFC that no
    # composition takes as its second character, and so must the first character of its decomposition
    seconds = set()
    for code in range(sys.maxunicode + 1):
        parts = unicodedata.decomposition(chr(code)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(chr(int(parts[1], 16)))
    chars = _stable_chars()
    assert len(chars) > 1000
    for c in chars:
        first = unicodedata.normalize("NFD", c)[0]
        assert unicodedata.normalize("NFC", c) == c and unicodedata.combining(c) == 0, hex(ord(c))
        assert c not in seconds and first not in seconds and unicodedata.combining(first) == 0, hex(ord(c))
    rng = random.Random(3)
    texts = ["".join(rng.choice(chars) for _ in range(40)) for _ in range(2000)]
    assert all(unicodedata.is_normalized("NFC", t) for t in texts)
    # and a text with one character outside them is still normalised
    assert normalize_texts(["Cafe\u0301 and Ω, \u212b"]).tolist() == [unicodedata.normalize("NFC", "Cafe\u0301 and Ω, \u212b")]
