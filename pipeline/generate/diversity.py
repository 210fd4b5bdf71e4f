"""Diversity of generated texts: distinct-n, the most common opening, and the near-duplicate rate.

TinyStories ended up with "Once upon a time" in 59% of its stories; this report makes such
collapse visible per run, and ``diversity_gate`` turns it into a warning or a failed run.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

_WORD = re.compile(r"\w+(?:'\w+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_n(tokenized: Sequence[Sequence[str]], n: int) -> float:
    """Unique n-grams over all n-grams of all texts (1.0 = no n-gram repeats anywhere)."""
    grams = Counter(tuple(t[i:i + n]) for t in tokenized for i in range(len(t) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def opening_share(tokenized: Sequence[Sequence[str]], n: int = 3) -> tuple[str, float]:
    """The most common opening n words and the share of texts that start with them."""
    openings = Counter(" ".join(t[:n]) for t in tokenized if len(t) >= n)
    if not openings:
        return "", 0.0
    opening, count = openings.most_common(1)[0]
    return opening, count / len(tokenized)


def near_duplicate_rate(tokenized: Sequence[Sequence[str]], threshold: float = 0.8, num_perm: int = 64,
                        shingle: int = 5) -> float:
    """Share of texts with at least one other text at estimated Jaccard >= ``threshold`` (MinHash LSH)."""
    from datasketch import MinHash, MinHashLSH

    if len(tokenized) < 2:
        return 0.0
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = []
    for i, t in enumerate(tokenized):
        grams = {" ".join(t[j:j + shingle]) for j in range(max(1, len(t) - shingle + 1))} or {""}
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(g.encode("utf-8") for g in grams)
        lsh.insert(i, m)
        hashes.append(m)
    dup = sum(1 for i, m in enumerate(hashes) if any(j != i for j in lsh.query(m)))
    return dup / len(tokenized)


def diversity_report(texts: Sequence[str]) -> dict[str, Any]:
    """distinct-1/2/3, the top opening 3-gram and its share, and the MinHash near-duplicate rate."""
    tokenized = [words(t) for t in texts]
    opening, share = opening_share(tokenized)
    return {
        "texts": len(texts),
        "distinct_1": round(distinct_n(tokenized, 1), 4),
        "distinct_2": round(distinct_n(tokenized, 2), 4),
        "distinct_3": round(distinct_n(tokenized, 3), 4),
        "top_opening": opening,
        "top_opening_share": round(share, 4),
        "near_duplicate_rate": round(near_duplicate_rate(tokenized), 4),
    }
