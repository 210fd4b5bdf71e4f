"""MinHash signatures and LSH banding, vectorised over a whole partition of documents; and the in-memory
half of dedup: exact-text hashes, the keep order, exact Jaccard of shingle sets, connected components.

The permutation scheme is datasketch's default ``affine32`` (datasketch >= 2.0): a 32-bit shingle
hash is pre-mixed with the MurmurHash3 finalizer, then permuted by ``a * h + b mod 2**32`` with the
``a``, ``b`` that ``datasketch.MinHash(num_perm, seed)`` draws. A signature row here is therefore
bit-for-bit the ``hashvalues`` of a datasketch MinHash fed the same shingle hashes, so sketches
interoperate with ``MinHashLSH``; only the loop is different: one numpy pass over the shingles
of all documents of a partition per permutation instead of one Python call per shingle.

Shingles are word n-grams (default 5) of the lowercased text, words being runs of letters, digits
and ``_`` (the words of ``dedup_form``). Each distinct word is hashed once (``word_hash``) and an
n-gram hash is a position-weighted sum of its word hashes, so no n-gram string is ever built.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pandas.util import hash_array

_NON_WORD = re.compile(r"\W+")  # punctuation and every kind of whitespace, in runs
# Odd 64-bit multipliers, one per position in the n-gram, so "a b" and "b a" hash differently.
_POSITION_MULTIPLIERS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
     0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9],
    dtype=np.uint64)
# Distinct odd multipliers for the slots of a band (a slot's position matters, not only its value).
_SLOT_MULTIPLIERS = np.random.RandomState(20240601).randint(0, 1 << 62, 64, dtype=np.uint64) * np.uint64(2) \
    + np.uint64(1)
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


def _arrow_text(texts: Iterable[str | None]) -> pa.Array:
    """Texts as an Arrow string array without nulls: non-strings are ``""``, lone surrogates U+FFFD."""
    if isinstance(texts, pd.Series) and isinstance(texts.dtype, pd.StringDtype):
        arr = pa.array(texts, type=pa.large_string())  # Arrow-backed: no Python objects at all
    else:
        values = [t if isinstance(t, str) else None for t in texts]
        try:
            arr = pa.array(values, type=pa.large_string())
        except UnicodeEncodeError:  # JSON "\ud800" escapes decode to lone surrogates
            arr = pa.array([t.encode("utf-8", "replace").decode("utf-8") if t is not None else None
                            for t in values], type=pa.large_string())
    return pc.fill_null(arr, "")


_WORD_BYTE = np.zeros(256, dtype=bool)  # ASCII word characters once lowercased: [a-z0-9_]
_WORD_BYTE[[*range(ord("a"), ord("z") + 1), *range(ord("0"), ord("9") + 1), ord("_")]] = True
_WORD_CHAR = r"^[\p{L}\p{N}_]$"  # RE2 (Arrow): one Unicode letter, digit or _


def _word_chars(data: np.ndarray) -> np.ndarray:
    """Per byte of valid UTF-8 ``data``: is it part of a word character (letter, digit or ``_``)?

    All bytes of a character share its class, so runs of word bytes never cut a character. Only
    the few non-ASCII bytes are decoded, and only the partition's distinct non-ASCII characters
    are classified (by RE2's Unicode classes, as a regex split would).
    """
    is_word = _WORD_BYTE[data]
    high = np.flatnonzero(data >= 0x80)
    if len(high) == 0:
        return is_word
    leads = high[(data[high] & 0xC0) != 0x80]
    b0 = data[leads].astype(np.uint32)
    length = np.where(b0 >= 0xF0, 4, np.where(b0 >= 0xE0, 3, 2))
    code = b0 & np.where(length == 4, 0x07, np.where(length == 3, 0x0F, 0x1F)).astype(np.uint32)
    for k in (1, 2, 3):  # shift in the continuation bytes of the characters that have a k-th one
        follow = data[np.minimum(leads + k, len(data) - 1)].astype(np.uint32) & np.uint32(0x3F)
        code = np.where(length > k, (code << np.uint32(6)) | follow, code)
    distinct, which = np.unique(code, return_inverse=True)
    chars = pa.array([chr(c) for c in distinct.tolist()], type=pa.string())
    lead_word = pc.match_substring_regex(chars, _WORD_CHAR).to_numpy(zero_copy_only=False)[which]
    is_word[high] = lead_word[np.searchsorted(leads, high, side="right") - 1]
    return is_word


def _split_words(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """``(words, index in arr of each word's text)`` of lowercased ``arr`` without nulls.

    Words are the maximal runs of Unicode letters, digits and ``_``, found by classifying bytes
    in numpy: several times faster than an RE2 split over the partition.
    """
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]] if offsets[-1] else \
        np.empty(0, dtype=np.uint8)
    offsets = offsets - offsets[0]
    is_word = _word_chars(data)
    changes = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1
    cut = np.zeros(len(data) + 1, dtype=bool)  # run starts: never across a text boundary
    cut[changes] = True
    cut[offsets] = True
    bounds = np.flatnonzero(cut)
    starts = bounds[:-1]
    runs = pa.LargeStringArray.from_buffers(len(starts), pa.py_buffer(bounds), pa.py_buffer(data))
    words = is_word[starts] if len(data) else np.zeros(len(starts), dtype=bool)
    return runs.filter(pa.array(words)), np.searchsorted(offsets, starts[words], side="right") - 1


def word_hash(words: np.ndarray) -> np.ndarray:
    """uint64 hashes of an object array of ``str`` words (SipHash-2-4 of UTF-8, pandas' fixed key).

    Vectorised C, and equal in every process (no ``PYTHONHASHSEED``), so workers agree.
    """
    return hash_array(np.asarray(words, dtype=object), categorize=False)


def _partition_words(texts: Iterable[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """``(uint64 word_hash of every word of all texts in order, words per text)``.

    Words are the maximal runs of letters, digits and ``_`` of the lowercased text (for English
    and most scripts the words of ``dedup_form``), split over the whole partition at once; each
    distinct word is hashed once (Arrow's dictionary encoding).
    """
    arr = pc.utf8_lower(_arrow_text(texts))
    words, owner = _split_words(arr)
    counts = np.bincount(owner, minlength=len(arr)).astype(np.int64)
    encoded = pc.dictionary_encode(words)
    hashes = word_hash(encoded.dictionary.to_numpy(zero_copy_only=False))
    return hashes[encoded.indices.to_numpy()], counts


def partition_shingles(texts: Iterable[str | None], ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of many texts at once: ``(flat uint32 hashes, shingles per text)``.

    Equal to concatenating ``shingle_hashes(t, ngram)``; the n-gram hashing runs once over the
    words of all texts (per-text numpy calls cost more than the hashing for short documents).
    """
    if not 1 <= ngram <= MAX_NGRAM:
        raise ValueError(f"ngram must be between 1 and {MAX_NGRAM}, got {ngram}")
    flat, counts = _partition_words(texts)
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
    mixed = _fmix32(np.asarray(flat, dtype=np.uint32))
    starts = np.cumsum(sizes[docs]) - sizes[docs]
    # One permutation at a time over every shingle of the partition: contiguous 1-D multiply, add
    # and segment minimum are ~10x faster than a (shingles x perms) block per chunk.
    permuted = np.empty_like(mixed)
    for p in range(num_perm):
        np.multiply(mixed, a[p], out=permuted)
        permuted += b[p]
        sig[docs, p] = np.minimum.reduceat(permuted, starts)
    return sig


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


def lsh_buckets(band_hashes: np.ndarray) -> np.ndarray:
    """``(n, bands)`` uint64 bucket ids: one number names (band, band hash), so an LSH index is one
    flat column (documents share a bucket iff they share a band, up to 64-bit collisions)."""
    bands = np.arange(band_hashes.shape[1], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return _fmix64(np.asarray(band_hashes, dtype=np.uint64) ^ bands)


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


# --- dedup in memory: exact hashes, the keep order, exact Jaccard, components ---------------

def exact_hashes(texts: Any) -> np.ndarray:
    """uint64 xxh3-64 hashes of the dedup form of ``texts`` (``None`` hashes like ``""``)."""
    return np.fromiter((xxhash.xxh3_64_intdigest(dedup_form(t).encode("utf-8", "surrogatepass"))
                        for t in texts), dtype=np.uint64)


def best_first(members: pd.DataFrame, group: str, doc: str = "doc", score: str = "score",
               length: str = "length") -> np.ndarray:
    """Positions of ``members`` ordered by ``group``, then by the keep rule within each group:
    highest score (a missing score ranks below every score), then longest, then smallest id."""
    ranked = pd.DataFrame({"group": members[group].to_numpy(), "doc": members[doc].to_numpy(),
                           "score": members[score].astype(float).fillna(-np.inf).to_numpy(),
                           "length": members[length].to_numpy()})
    return ranked.sort_values(["group", "score", "length", "doc"], ascending=[True, False, False, True],
                              kind="stable").index.to_numpy()


def keep_best(members: pd.DataFrame, group: str, doc: str = "doc", score: str = "score",
              length: str = "length") -> pd.Series:
    """True for the one member of each ``group`` to keep: the first of ``best_first``."""
    order = best_first(members, group, doc, score, length)
    groups = members[group].to_numpy()[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = groups[1:] != groups[:-1]
    best = np.zeros(len(members), dtype=bool)
    best[order[first]] = True
    return pd.Series(best, index=members.index)  # positional: the index may repeat


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted arrays of distinct shingle hashes."""
    common = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - common
    return common / union if union else 0.0


def connected_components(edges: pd.DataFrame) -> pd.DataFrame:
    """``node``, ``label`` for every node of ``edges`` (``src``, ``dst``): label = smallest id of its component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as components

    codes, nodes = pd.factorize(pd.concat([edges["src"], edges["dst"]], ignore_index=True))
    half = len(edges)
    graph = coo_matrix((np.ones(half, dtype=np.int8), (codes[:half], codes[half:])), shape=(len(nodes),) * 2)
    component = components(graph, directed=False)[1]
    labels = pd.DataFrame({"node": nodes, "component": component})
    return labels.assign(label=labels.groupby("component")["node"].transform("min"))[["node", "label"]]
