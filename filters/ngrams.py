"""Word n-gram hashing shared by the repetition heuristics and decontamination: vectorised uint64."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant: mixes positions into the hash


def word_hashes(tokens: Sequence[str]) -> np.ndarray:
    """A uint64 hash per word, consistent within one process (Python's string hash).

    Every use compares hashes made in the same process (a document against itself, or against
    an index each worker builds), and ``hash`` is several times faster than any hash that
    needs the text encoded first; never persist these values.
    """
    return np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)).view(np.uint64)


def ngram_hashes_by_size(hashes: np.ndarray, sizes: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """``(n, hash of every word n-gram)`` for each n in ``sizes``, built incrementally from n-1."""
    wanted = set(sizes)
    current = hashes.copy()
    with np.errstate(over="ignore"):
        for n in range(1, max(wanted, default=0) + 1):
            if n > 1:  # polynomial rolling hash, wrapping mod 2**64
                current = current[:-1] * _MULTIPLIER + hashes[n - 1:]
            if n in wanted:
                yield n, current


def ngram_hashes(tokens: Sequence[str], n: int) -> np.ndarray:
    """A uint64 hash of every word n-gram of ``tokens`` (empty if fewer than ``n`` words)."""
    if len(tokens) < n:
        return np.empty(0, dtype=np.uint64)
    return next(ngram_hashes_by_size(word_hashes(tokens), [n]))[1]
