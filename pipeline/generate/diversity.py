"""Diversity of generated texts: distinct-n, the most common opening, and the near-duplicate rate.

TinyStories ended up with "Once upon a time" in 59% of its stories; this report makes such
collapse visible per run; the generate stage's gate turns it into a warning or a failed run.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+(?:'\w+)?")

GATE_MIN_ROWS = 50
"""Rows a run completes before the opening gate may stop it: fewer say little about the mix."""


def words_keeping_contractions(text: str) -> list[str]:
    """Lower-cased words, a contraction kept whole ("don't" is one word, as a reader counts it).

    Not ``filters.decontaminate``'s tokenisation, which splits at every non-word character so
    that a benchmark item matches however its apostrophes were written.
    """
    return _WORD.findall(text.lower())


words = words_keeping_contractions  # the name ``pipeline.hub.diversity`` imports; to go once it switches


def distinct_n(tokenized: Sequence[Sequence[str]], n: int) -> float:
    """Unique n-grams over all n-grams of all texts (1.0 = no n-gram repeats anywhere)."""
    # a set fed by zip, not a Counter of sliced tuples: the same ratio for less work, which the run's
    # exit waits for
    grams: set[tuple[str, ...]] = set()
    total = 0
    for t in tokenized:
        grams.update(zip(*(t[i:] for i in range(n)), strict=False))  # the shorter slices end it
        total += max(len(t) - n + 1, 0)
    return len(grams) / total if total else 0.0


def opening(text: str, n: int = 3) -> str:
    """The first ``n`` words of ``text`` as the opening statistics count them ("" if it has fewer)."""
    first = words_keeping_contractions(text[:40 * n])[:n]  # the head is enough: no need to tokenize a whole book
    return " ".join(first) if len(first) == n else ""


def opening_gate(counts: Counter[str], rows: int, max_share: float, min_rows: int = 10) -> str | None:
    """Why the most common opening in ``counts`` (over ``rows`` texts) breaks the gate, or None."""
    if rows < min_rows or not counts:
        return None
    top, count = counts.most_common(1)[0]
    if count / rows <= max_share:
        return None
    return (f"opening {top!r} starts {count} of {rows} rows ({count / rows:.1%}), over "
            f"generate.diversity_max_opening_share={max_share:g}")


@dataclass
class OpeningGate:
    """generate's gate on a run (``generate.diversity_gate=fail``): stop once one opening starts
    more than ``max_share`` of the rows completed, judged after ``min_rows``."""

    max_share: float
    min_rows: int = GATE_MIN_ROWS
    openings: Counter[str] = field(default_factory=Counter)
    rows: int = 0

    def key(self, text: str) -> str:
        return opening(text)

    def observe(self, keys: list[str]) -> str | None:
        self.rows += len(keys)
        self.openings.update(k for k in keys if k)
        gate = opening_gate(self.openings, self.rows, self.max_share, self.min_rows)
        return f"diversity gate (generate.diversity_gate=fail): {gate}" if gate else None


def opening_share(tokenized: Sequence[Sequence[str]], n: int = 3) -> tuple[str, float]:
    """The most common opening n words and the share of texts that start with them."""
    openings = Counter(" ".join(t[:n]) for t in tokenized if len(t) >= n)
    if not openings:
        return "", 0.0
    opening, count = openings.most_common(1)[0]
    return opening, count / len(tokenized)


def near_duplicate_rate(texts: Sequence[str], threshold: float = 0.8, num_perm: int = 128,
                        ngram: int = 5) -> float:
    """Share of texts with another text at estimated Jaccard >= ``threshold`` over word ``ngram`` shingles.

    The filter stage's MinHash (``filters.minhash``: signatures, LSH bands): within each band bucket,
    every member is verified against the bucket's first member, as ``filters.dedup`` links clusters.
    """
    from filters.minhash import band_hashes, estimated_jaccard, lsh_params, minhash_signatures

    if len(texts) < 2:
        return 0.0
    signatures = minhash_signatures(texts, num_perm=num_perm, ngram=ngram)
    buckets = band_hashes(signatures, *lsh_params(threshold, num_perm))
    duplicate = np.zeros(len(texts), dtype=bool)
    for band in buckets.T:
        _, leader = np.unique(band, return_inverse=True)
        first = np.full(leader.max() + 1, len(texts))
        np.minimum.at(first, leader, np.arange(len(texts)))
        pairs = np.flatnonzero(first[leader] != np.arange(len(texts)))  # members that are not the leader
        similar = pairs[estimated_jaccard(signatures[pairs], signatures[first[leader[pairs]]]) >= threshold]
        duplicate[similar] = True
        duplicate[first[leader[similar]]] = True
    return float(duplicate.mean())


def diversity_report(texts: Sequence[str]) -> dict[str, Any]:
    """distinct-1/2/3, the top opening 3-gram and its share, and the MinHash near-duplicate rate (``threshold`` 0.8)."""
    tokenized = [words_keeping_contractions(t) for t in texts]
    opening, share = opening_share(tokenized)
    return {
        "texts": len(texts),
        "distinct_1": round(distinct_n(tokenized, 1), 4),
        "distinct_2": round(distinct_n(tokenized, 2), 4),
        "distinct_3": round(distinct_n(tokenized, 3), 4),
        "top_opening": opening,
        "top_opening_share": round(share, 4),
        "near_duplicate_rate": round(near_duplicate_rate(texts), 4),
    }
