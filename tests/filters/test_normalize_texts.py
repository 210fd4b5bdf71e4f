"""The batch normaliser is `normalize_text` applied text by text, whatever the whitespace and controls."""

from __future__ import annotations

import random

import pytest

from filters.normalize import normalize_text, normalize_texts

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
