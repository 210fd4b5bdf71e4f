"""MinHash signatures and LSH banding, vectorised over a whole partition of documents.

The permutation scheme is datasketch's default ``affine32`` (datasketch >= 2.0): a 32-bit shingle
hash is pre-mixed with the MurmurHash3 finalizer, then permuted by ``a * h + b mod 2**32`` with the
``a``, ``b`` that ``datasketch.MinHash(num_perm, seed)`` draws. A signature row here is therefore
bit-for-bit the ``hashvalues`` of a datasketch MinHash fed the same shingle hashes, so sketches
interoperate with ``MinHashLSH``; only the loop is different: one numpy pass per chunk of shingles
of many documents instead of one Python call per shingle.

Shingles are word n-grams (default 5) of the dedup form of a text: lowercased, punctuation
turned into spaces, whitespace collapsed. Each word is hashed once with xxh3-64 and an n-gram hash
is a position-weighted sum of its word hashes, so no n-gram string is ever built.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import chain

import numpy as np
import xxhash

_NON_WORD = re.compile(r"\W+")  # punctuation and every kind of whitespace, in runs
# Odd 64-bit multipliers, one per position in the n-gram, so "a b" and "b a" hash differently.
_POSITION_MULTIPLIERS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
     0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9],
    dtype=np.uint64)
# Distinct odd multipliers for the slots of a band (a slot's position matters, not only its value).
_SLOT_MULTIPLIERS = np.random.RandomState(20240601).randint(0, 1 << 62, 64, dtype=np.uint64) * np.uint64(2) \
    + np.uint64(1)
# Shingles per numpy chunk: chunk x num_perm uint32 = 1 MB at 128 perms stays in cache (2x faster
# than 8 MB chunks here), whatever the document sizes.
_CHUNK = 2048
MAX_HASH = np.uint32(0xFFFFFFFF)
MAX_NGRAM = len(_POSITION_MULTIPLIERS)


def dedup_form(text: str | None) -> str:
    """The text that dedup compares: lowercased, punctuation as spaces, single spaces, stripped.

    ``None`` and non-strings become ``""``.
    """
    if not isinstance(text, str):
        return ""
    return _NON_WORD.sub(" ", text.lower()).strip()


def _ngram_hashes(words: np.ndarray, ngram: int) -> np.ndarray:
    """32-bit hashes of the word n-grams of a run of word hashes (one shingle if it is shorter)."""
    n = len(words)
    if n == 0:
        return np.empty(0, dtype=np.uint32)
    width = min(ngram, n)
    count = n - width + 1
    h = np.zeros(count, dtype=np.uint64)
    for k in range(width):
        h += words[k:k + count] * _POSITION_MULTIPLIERS[k]
    return (h ^ (h >> np.uint64(32))).astype(np.uint32)


def shingle_hashes(text: str | None, ngram: int = 5) -> np.ndarray:
    """The uint32 hashes of the word ``ngram``-grams of ``text`` (its shingle set, with repeats)."""
    return partition_shingles([text], ngram)[0]


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` uint32 arrays that ``datasketch.MinHash(num_perm, seed)`` uses (affine32)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def partition_shingles(texts: Iterable[str | None], ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of many texts at once: ``(flat uint32 hashes, shingles per text)``.

    Equal to concatenating ``shingle_hashes(t, ngram)``; the n-gram hashing runs once over the
    words of all texts (per-text numpy calls cost more than the hashing for short documents).
    """
    if not 1 <= ngram <= MAX_NGRAM:
        raise ValueError(f"ngram must be between 1 and {MAX_NGRAM}, got {ngram}")
    words = [dedup_form(t).encode("utf-8", "surrogatepass").split() for t in texts]
    counts = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    flat = np.fromiter(map(xxhash.xxh3_64_intdigest, chain.from_iterable(words)), dtype=np.uint64,
                       count=int(counts.sum()))
    sizes = np.where(counts >= ngram, counts - ngram + 1, np.minimum(counts, 1))
    starts = np.cumsum(counts) - counts
    first = np.cumsum(sizes) - sizes  # index of each text's first shingle
    full = _ngram_hashes(flat, ngram) if len(flat) >= ngram else np.empty(0, dtype=np.uint32)
    # shingle j of a text of >= ngram words is the n-gram at word starts[i] + j of the whole run;
    # n-grams crossing a text boundary are never picked
    positions = np.repeat(starts - first, sizes) + np.arange(int(sizes.sum()))
    whole = np.repeat(counts >= ngram, sizes)
    out = np.empty(len(positions), dtype=np.uint32)
    out[whole] = full[positions[whole]]
    for i in np.flatnonzero((counts > 0) & (counts < ngram)):  # one shingle of all its few words
        out[first[i]] = _ngram_hashes(flat[starts[i]:starts[i] + counts[i]], ngram)[0]
    return out, sizes


def signatures_from_flat(flat: np.ndarray, sizes: np.ndarray, num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """MinHash signatures ``(len(sizes), num_perm)`` uint32 of shingle hashes ``flat`` cut by ``sizes``.

    A text without shingles gets the all-``MAX_HASH`` row, as an empty datasketch MinHash.
    """
    a, b = permutations(num_perm, seed)
    sig = np.full((len(sizes), num_perm), MAX_HASH, dtype=np.uint32)
    docs = np.flatnonzero(sizes)
    if len(docs) == 0:
        return sig
    flat = _fmix32(np.asarray(flat, dtype=np.uint32))
    starts = np.concatenate([[0], np.cumsum(sizes[docs])[:-1]])
    # Segment boundaries = document starts plus chunk starts, so every chunk reduces whole segments.
    cuts = np.union1d(starts, np.arange(0, len(flat), _CHUNK))
    permuted = np.empty((_CHUNK, num_perm), dtype=np.uint32)
    for c0 in range(0, len(flat), _CHUNK):
        c1 = min(c0 + _CHUNK, len(flat))
        local = cuts[(cuts >= c0) & (cuts < c1)]
        block = permuted[:c1 - c0]
        np.multiply(flat[c0:c1, None], a, out=block)
        block += b
        mins = np.minimum.reduceat(block, local - c0, axis=0)
        owner = docs[np.searchsorted(starts, local, side="right") - 1]
        sig[owner] = np.minimum(sig[owner], mins)
    return sig


def signatures_from_shingles(shingles: Sequence[np.ndarray], num_perm: int = 128,
                             seed: int = 0) -> np.ndarray:
    """MinHash signatures ``(len(shingles), num_perm)`` uint32 of per-document shingle hash arrays."""
    sizes = np.fromiter(map(len, shingles), dtype=np.int64, count=len(shingles))
    flat = np.concatenate(list(shingles)) if len(shingles) else np.empty(0, dtype=np.uint32)
    return signatures_from_flat(flat, sizes, num_perm, seed)


def minhash_signatures(texts: Iterable[str | None], num_perm: int = 128, ngram: int = 5,
                       seed: int = 0) -> np.ndarray:
    """MinHash signatures ``(n, num_perm)`` uint32 of ``texts`` over word ``ngram``-gram shingles.

    Row ``i`` equals ``datasketch.MinHash(num_perm, seed=seed, hashfunc=int)`` updated with
    ``shingle_hashes(texts[i], ngram)``. Empty and ``None`` texts give all-``MAX_HASH`` rows.
    """
    return signatures_from_flat(*partition_shingles(texts, ngram), num_perm, seed)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Row-wise share of equal signature slots: the MinHash estimate of Jaccard similarity."""
    return np.mean(np.asarray(sig_a) == np.asarray(sig_b), axis=-1)


def _area(similarity: np.ndarray, probability: np.ndarray) -> float:
    """Trapezoid integral of ``probability`` over ``similarity``."""
    return float(np.sum((probability[1:] + probability[:-1]) * np.diff(similarity)) / 2)


def collision_probability(similarity: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """The LSH S-curve: probability that two documents of Jaccard ``similarity`` share a bucket."""
    return 1 - (1 - np.asarray(similarity, dtype=float) ** rows) ** bands


def lsh_params(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
               false_negative_weight: float = 0.5) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimising the weighted error area.

    As ``datasketch.MinHashLSH``: false positives are the S-curve's area below ``threshold``,
    false negatives the area above it missed.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    below, above = np.linspace(0.0, threshold, 201), np.linspace(threshold, 1.0, 201)
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = _area(below, collision_probability(below, bands, rows))
            fn = _area(above, 1 - collision_probability(above, bands, rows))
            error = false_positive_weight * fp + false_negative_weight * fn
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``(n, bands)`` uint64 hashes of each band of ``rows`` signature slots.

    Two documents land in the same bucket of band ``k`` iff their slots ``k*rows .. k*rows+rows-1``
    are all equal (up to 64-bit hash collisions).
    """
    sig = np.asarray(signatures)
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands * rows = {bands * rows} exceeds num_perm = {sig.shape[1]}")
    out = np.zeros((sig.shape[0], bands), dtype=np.uint64)
    for k in range(bands):
        for j in range(rows):
            out[:, k] += sig[:, k * rows + j].astype(np.uint64) * _SLOT_MULTIPLIERS[j % len(_SLOT_MULTIPLIERS)] \
                + np.uint64(j)
    return _fmix64(out)


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))
