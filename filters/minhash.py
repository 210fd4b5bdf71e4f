"""MinHash signatures and LSH banding, vectorised over a whole partition of documents; and the in-memory
half of dedup: exact-text hashes, the keep order, exact Jaccard of shingle sets, connected components.

Signatures are rensa's R-MinHash of the shingle hashes (permutations made on the fly from random
``(a, b)`` pairs, after C-MinHash; its Jaccard estimate is unbiased, with datasketch's spread):
rensa computes a whole partition's signature matrix in Rust from one flat buffer of hashes, the
same for a given ``seed`` and rensa algorithm version (which the filter stage's lineage records).

Shingles are word n-grams (default 5) of the lowercased text, words being runs of letters, digits
and ``_`` (the words of ``dedup_form``). Words are found and hashed straight from the UTF-8 bytes of
the whole partition (``word_hash``: a word's bytes read 8 at a time, mixed by the MurmurHash3
finalizer), and an n-gram hash is a position-weighted sum of its word hashes, so no word or n-gram
string is ever built. The same word hashes give the exact-duplicate hash of a text (its word
sequence), so one split of a partition serves both dedup passes (``dedup_hashes``).

Why the split is by hand: rensa's own entry points take Python string tokens, and building those
strings is where its time goes (bench/filter.py ``--kernels`` measures both); here only the
signature step is rensa's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from rensa import RMinHash

from filters.normalize import arrow_texts, utf8_buffers

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
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Shingles per signature call: its uint64 copy and the Python rows rensa returns stay a few MB
_SIGNATURE_SHINGLES = 1 << 20
# _LOW_BYTES[k]: the mask of the low k bytes of a little-endian uint64 (k = 8: all of them)
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)
# Text per word split: the split's byte-sized temporaries stay near cache size, and its memory is
# bounded whatever the partition's size.
_SPLIT_BYTES = 4 << 20


def dedup_form(text: str | None) -> str:
    """The text that dedup compares: lowercased, punctuation as spaces, single spaces, stripped.

    ``None`` and non-strings become ``""``.
    """
    if not isinstance(text, str):
        return ""
    return _NON_WORD.sub(" ", text.lower()).strip()


def shingle_hashes(text: str | None, ngram: int = 5) -> np.ndarray:
    """The uint32 hashes of the word ``ngram``-grams of ``text`` (its shingle set, with repeats)."""
    return partition_shingles([text], ngram)[0]


def _fmix64(h: np.ndarray) -> np.ndarray:
    """The MurmurHash3 64-bit finalizer of a copy of ``h``."""
    return _fmix64_in_place(h.astype(np.uint64, copy=True))


def _fmix64_in_place(h: np.ndarray) -> np.ndarray:
    # in place, with one scratch array: fresh large temporaries cost page faults, as much as the math
    shifted = h >> np.uint64(33)
    h ^= shifted
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= np.right_shift(h, np.uint64(33), out=shifted)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= np.right_shift(h, np.uint64(33), out=shifted)
    return h


def _arrow_text(texts: Iterable[str | None]) -> pa.Array:
    """Texts as an Arrow string array without nulls: non-strings are ``""``, lone surrogates U+FFFD."""
    arr = arrow_texts(texts)
    if arr is None:  # JSON "\ud800" escapes decode to lone surrogates
        arr = arrow_texts([t.encode("utf-8", "replace").decode("utf-8") if isinstance(t, str) else None
                           for t in texts])
    return arr


def _utf8_bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets from 0, UTF-8 bytes + 8 zero bytes)`` of a large_string array: the padding lets
    a uint64 be read at any byte of the text."""
    offsets, data = utf8_buffers(arr)
    padded = np.zeros(int(offsets[-1] - offsets[0]) + 8, dtype=np.uint8)
    padded[:-8] = data[offsets[0]:offsets[-1]]
    return offsets - offsets[0], padded


_WORD_CHAR = r"^[\p{L}\p{N}_]$"  # RE2 (Arrow): one Unicode letter, digit or _
_EMPTY, _SPACE = pa.scalar("", pa.large_string()), pa.scalar(" ", pa.large_string())


def _word_chars(data: np.ndarray) -> np.ndarray:
    """Per byte of valid, lowercased UTF-8 ``data``: is it part of a word character (letter, digit or ``_``)?

    All bytes of a character share its class, so runs of word bytes never cut a character. Only
    the few non-ASCII bytes are decoded, and only the partition's distinct non-ASCII characters
    are classified (by RE2's Unicode classes, as a regex split would).
    """
    # ASCII word bytes of lowercased text are 0-9, a-z and _: two wrapping range tests and one
    # equality, in place, are cheaper than gathering from a 256-entry table
    scratch = data - np.uint8(ord("0"))
    is_word = scratch < 10
    scratch -= np.uint8(ord("a") - ord("0"))
    test = scratch.view(bool)  # each test overwrites the byte it reads
    is_word |= np.less(scratch, 26, out=test)
    is_word |= np.equal(data, ord("_"), out=test)
    if data.max(initial=0) < 0x80:
        return is_word
    high = np.flatnonzero(np.greater_equal(data, 0x80, out=test))
    leads = high[(data[high] & 0xC0) != 0x80]
    b0 = data[leads].astype(np.uint32)
    length = np.where(b0 >= 0xF0, 4, np.where(b0 >= 0xE0, 3, 2))
    code = b0 & np.where(length == 4, 0x07, np.where(length == 3, 0x0F, 0x1F)).astype(np.uint32)
    for k in (1, 2, 3):  # shift in the continuation bytes of the characters that have a k-th one
        follow = data[np.minimum(leads + k, len(data) - 1)].astype(np.uint32) & np.uint32(0x3F)
        code = np.where(length > k, (code << np.uint32(6)) | follow, code)
    which, distinct = pd.factorize(code)
    chars = pa.array([chr(c) for c in distinct.tolist()], type=pa.string())
    lead_word = pc.match_substring_regex(chars, _WORD_CHAR).to_numpy(zero_copy_only=False)[which]
    spread = np.repeat(lead_word, length)  # valid UTF-8: each lead byte, then its continuation bytes
    if len(spread) != len(high):  # not valid after all: each byte takes its nearest lead's class
        spread = lead_word[np.searchsorted(leads, high, side="right") - 1]
    is_word[high] = spread
    return is_word


def _word_bounds(is_word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)`` byte positions of the words: the maximal runs of word bytes.

    ``is_word[0]`` and ``is_word[-1]`` must be False (the space before each text, a padding byte),
    so the changes of class alternate between a run's start and its end.
    """
    changes = np.flatnonzero(np.not_equal(is_word[1:], is_word[:-1]))
    changes += 1  # a change between bytes j and j+1 starts or ends a run at j+1
    return changes[0::2], changes[1::2]


def _bytes_hash(padded: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """uint64 hash of each byte range ``[start, end)`` of ``padded`` (see ``word_hash``).

    A word is read as little-endian uint64 chunks straight from the bytes (unaligned reads), no
    string is built. Up to 8 bytes the hash is a bijection of the bytes (no collisions at all: words
    have no NUL byte, so the zero-masked tail never makes two alike). A longer word chains its
    length, its chunks at 8, 16, ... and its last 8 bytes through the MurmurHash3 64-bit finalizer:
    the last read may overlap the one before, which the length makes unambiguous.
    """
    view = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    lengths = ends - starts
    h = view[starts]
    h &= _LOW_BYTES.take(lengths, mode="clip")  # clip: 9 bytes and more keep all 8
    longer = np.flatnonzero(lengths > 8)  # a minority of words: the chained hash runs on them alone
    if len(longer):
        start, length = starts[longer], lengths[longer]
        chain = h[longer]
        chain ^= length.astype(np.uint64) * _GOLDEN
        middle, read = np.flatnonzero(length > 16), 8
        while len(middle):
            chain[middle] = _fmix64_in_place(chain[middle]) ^ view[start[middle] + read]
            read += 8
            middle = middle[length[middle] > read + 8]
        _fmix64_in_place(chain)
        chain ^= view[ends[longer] - 8]
        h[longer] = chain
    return _fmix64_in_place(h)


def word_hash(words: Iterable[str]) -> np.ndarray:
    """uint64 hashes of ``str`` words: their UTF-8 bytes, 8 at a time, through the MurmurHash3 finalizer.

    The hash the partition split gives each word. Arithmetic on bytes, so equal in every process
    and on every machine (no ``PYTHONHASHSEED``) and workers agree; words of up to 8 bytes never collide.
    """
    offsets, padded = _utf8_bytes(_arrow_text(words))
    return _bytes_hash(padded, offsets[:-1], offsets[1:])


def _split_chunks(texts: Iterable[str | None]) -> Iterator[pa.Array]:
    """``texts`` as consecutive Arrow slices of about ``_SPLIT_BYTES`` of text (a longer text alone)."""
    arr = _arrow_text(texts)
    offsets, _ = utf8_buffers(arr)
    targets = np.arange(offsets[0] + _SPLIT_BYTES, offsets[-1], _SPLIT_BYTES)
    cuts = np.unique([0, *np.searchsorted(offsets, targets).tolist(), len(arr)])
    if len(cuts) == 1:  # no texts
        yield arr
    for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
        yield arr.slice(lo, hi - lo)


def _concatenated(parts: Iterable[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """The columns of per-chunk results, each concatenated over the chunks."""
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def _partition_words(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(uint64 word_hash of every word of the texts of arr in order, words per text)``.

    Words are the maximal runs of letters, digits and ``_`` of the lowercased text (for English
    and most scripts the words of ``dedup_form``), found and hashed over the bytes of all texts at
    once, with no per-word Python or Arrow object.
    """
    # " " + each text: no run of word bytes spans two texts, and the first byte is not a word's
    offsets, padded = _utf8_bytes(pc.binary_join_element_wise(_EMPTY, pc.utf8_lower(arr), _SPACE))
    starts, ends = _word_bounds(_word_chars(padded[:-7]))  # one zero padding byte ends the last run
    return _bytes_hash(padded, starts, ends), np.diff(np.searchsorted(starts, offsets))


def _shingles(words: np.ndarray, counts: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """``(flat uint32 shingle hashes, shingles per text)`` of the word hashes of texts of ``counts`` words.

    A text of at least ``ngram`` words has one shingle per full n-gram; a shorter one has a single
    shingle of all its words; an empty one has none.
    """
    sizes = np.where(counts >= ngram, counts - ngram + 1, np.minimum(counts, 1))
    n = len(words)
    h = words * _POSITION_MULTIPLIERS[0]
    term = np.empty_like(h)
    for k in range(1, min(ngram, n)):  # h[j]: the n-gram starting at word j of the whole run (cut at its end)
        h[:n - k] += np.multiply(words[k:], _POSITION_MULTIPLIERS[k], out=term[:n - k])
    first = np.cumsum(counts) - counts
    short = np.flatnonzero((counts > 0) & (counts < ngram))
    if len(short):  # their one shingle sums their own words only, not the next text's
        at, count = first[short], counts[short]
        partial = np.zeros(len(short), dtype=np.uint64)
        for k in range(ngram - 1):
            some = count > k
            partial[some] += words[at[some] + k] * _POSITION_MULTIPLIERS[k]
        h[at] = partial
    halves = h.view(np.uint32)  # fold to 32 bits: low ^ high half (either order: xor is symmetric)
    folded = np.bitwise_xor(halves[0::2], halves[1::2])
    # each text keeps its first `sizes` n-grams: those never cross into the next text
    keep = np.repeat(np.tile([True, False], len(counts)), np.column_stack([sizes, counts - sizes]).ravel())
    return folded[keep], sizes


def _sequence_hashes(words: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """uint64 hash per text of its word sequence (order, repeats and count all matter)."""
    first = np.cumsum(counts) - counts
    terms = np.arange(len(words), dtype=np.uint64)
    terms -= np.repeat(first.astype(np.uint64), counts)  # the position of each word in its text
    terms *= _GOLDEN
    terms += words
    # a sum of (word, position) pairs each mixed on its own: no algebraic structure that reorderings
    # could cancel, as a polynomial hash mod 2**64 has (Thue-Morse sequences)
    _fmix64_in_place(terms)
    total = np.zeros(len(counts), dtype=np.uint64)
    some = counts > 0
    if some.any():
        total[some] = np.add.reduceat(terms, first[some])
    total ^= counts.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    return _fmix64_in_place(total)


def partition_shingles(texts: Iterable[str | None], ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of many texts at once: ``(flat uint32 hashes, shingles per text)``.

    Equal to concatenating ``shingle_hashes(t, ngram)``; the split and the n-gram hashing run over
    the words of many texts at once, a few MB of text at a time (per-text numpy calls cost more
    than the hashing for short documents).
    """
    _check_ngram(ngram)
    return _concatenated(_shingles(*_partition_words(chunk), ngram) for chunk in _split_chunks(texts))


def dedup_hashes(texts: Iterable[str | None], ngram: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(exact_hashes(texts), *partition_shingles(texts, ngram))`` from one word split of the texts.

    Both dedup passes of a partition for the price of one split (the split costs more than the rest).
    """
    _check_ngram(ngram)

    def chunk_hashes(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        words, counts = _partition_words(chunk)
        return (_sequence_hashes(words, counts), *_shingles(words, counts, ngram))

    return _concatenated(chunk_hashes(chunk) for chunk in _split_chunks(texts))


def _check_ngram(ngram: int) -> None:
    if not 1 <= ngram <= MAX_NGRAM:
        raise ValueError(f"ngram must be between 1 and {MAX_NGRAM}, got {ngram}")


def signatures_from_flat(flat: np.ndarray, sizes: np.ndarray, num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """MinHash signatures ``(len(sizes), num_perm)`` uint32 of shingle hashes ``flat`` cut by ``sizes``.

    rensa's R-MinHash of the shingle hashes (``RMinHash.digest_matrix_from_flat_token_hashes``),
    ``_SIGNATURE_SHINGLES`` at a time. A text without shingles gets the all-``MAX_HASH`` row.
    """
    sig = np.empty((len(sizes), num_perm), dtype=np.uint32)
    ends = np.cumsum(sizes, dtype=np.int64)
    lo = 0
    while lo < len(sizes):  # whole documents, about _SIGNATURE_SHINGLES shingles per call
        start = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, start + _SIGNATURE_SHINGLES, side="right")))
        offsets = np.concatenate(([0], ends[lo:hi] - start)).astype(np.uint64)
        tokens = flat[start:int(ends[hi - 1])].astype(np.uint64)
        rows = RMinHash.digest_matrix_from_flat_token_hashes(tokens, offsets, num_perm, seed).to_rows()
        sig[lo:hi] = np.array(rows, dtype=np.uint32).reshape(hi - lo, num_perm)
        lo = hi
    return sig


def signature_scheme() -> str:
    """What a signature depends on beyond its inputs and ``seed``: rensa's release and algorithm version."""
    return f"rensa {metadata.version('rensa')} R-MinHash v{RMinHash.ALGORITHM_VERSION}"


def minhash_signatures(texts: Iterable[str | None], num_perm: int = 128, ngram: int = 5,
                       seed: int = 0) -> np.ndarray:
    """MinHash signatures ``(n, num_perm)`` uint32 of ``texts`` over word ``ngram``-gram shingles.

    Row ``i`` is rensa's ``RMinHash(num_perm, seed)`` digest of ``shingle_hashes(texts[i], ngram)``.
    Empty and ``None`` texts give all-``MAX_HASH`` rows.
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


# --- dedup in memory: exact hashes, the keep order, exact Jaccard, components ---------------

def exact_hashes(texts: Any) -> np.ndarray:
    """uint64 hash of the dedup form of each text: its sequence of words (``None`` hashes like ``""``).

    Two texts hash alike iff their word sequences are equal (up to 64-bit collisions), i.e. they have
    the same ``dedup_form``: case, punctuation and spacing are ignored. Computed from the word hashes
    of the partition split, so no dedup form is ever built (``dedup_hashes`` shares that split). The
    split's words are ``dedup_form``'s for every character but two capitals that Python lowercases by
    context or into two characters (U+0130 "İ"; U+03A3 "Σ" at the end of a word, Python's "ς",
    Arrow's "σ") and letters newer than Python's Unicode tables.
    """
    return np.concatenate([_sequence_hashes(*_partition_words(chunk)) for chunk in _split_chunks(texts)])


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
    """``node``, ``label`` for every node of ``edges`` (``src``, ``dst``): label = smallest id of its component.

    Min-label propagation with pointer jumping in numpy: the edges are those of the duplicates, a
    few, so this is quicker than importing scipy's graph module.
    """
    codes, nodes = pd.factorize(pd.concat([edges["src"], edges["dst"]], ignore_index=True))
    a, b = codes[:len(edges)], codes[len(edges):]
    label = np.arange(len(nodes))
    while True:  # every node takes the smallest label of its edges, then of its label's node
        smallest = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, smallest)
        np.minimum.at(new, b, smallest)
        new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    labels = pd.DataFrame({"node": nodes, "component": label})
    return labels.assign(label=labels.groupby("component")["node"].transform("min"))[["node", "label"]]


# --- dedup over a cluster: the kernels each reducer runs on its rows ---------------------------

def set_offsets(sets: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(values, offsets from 0)`` of an Arrow list array (or chunked array) of sorted distinct uint32 sets."""
    arr = sets.combine_chunks() if isinstance(sets, pa.ChunkedArray) else sets
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    values = np.asarray(arr.values, dtype=np.uint32)[offsets[0]:offsets[-1]]
    return values, offsets - offsets[0]


# Elements per merge in pair_jaccard: its temporaries stay in cache, unlike one merge of all
_MERGE_ELEMENTS = 1 << 18


def pair_jaccard(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Exact Jaccard of each pair ``(a[i], b[i])`` of sorted distinct uint32 sets, each side given as
    ``(flat values, offsets)`` (``set_offsets``); 0 where both are empty.

    Every element is tagged with its pair's number in the high 32 bits, so each side is one sorted
    run; a stable sort merges the two runs (timsort: linear), and an element both sets hold is one
    equal neighbour. No call per pair: pairs go ``_MERGE_ELEMENTS`` elements at a time.
    """
    (a_values, a_offsets), (b_values, b_offsets) = a, b
    pairs = len(a_offsets) - 1
    a_sizes, b_sizes = np.diff(a_offsets), np.diff(b_offsets)
    common = np.zeros(pairs, dtype=np.int64)
    ends = np.cumsum(a_sizes + b_sizes)
    lo = 0
    while lo < pairs:
        start = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, start + _MERGE_ELEMENTS, side="right")))
        number = np.arange(hi - lo, dtype=np.uint64)
        both = np.concatenate([
            (np.repeat(number, a_sizes[lo:hi]) << np.uint64(32)) | a_values[a_offsets[lo]:a_offsets[hi]],
            (np.repeat(number, b_sizes[lo:hi]) << np.uint64(32)) | b_values[b_offsets[lo]:b_offsets[hi]]])
        both.sort(kind="stable")
        shared = both[1:][both[1:] == both[:-1]]
        common[lo:hi] = np.bincount((shared >> np.uint64(32)).astype(np.intp), minlength=hi - lo)
        lo = hi
    union = a_sizes + b_sizes - common
    return np.divide(common, union, out=np.zeros(pairs), where=union > 0)


def bucket_stars(bucket: np.ndarray, key: np.ndarray, doc: Any) -> tuple[np.ndarray, np.ndarray]:
    """Candidate edges ``(src, dst)`` of LSH buckets: every member ``key`` of a bucket with two or more
    members linked to the member with the smallest ``doc`` (a star, not all pairs); distinct edges."""
    ranks = pd.factorize(np.asarray(doc), sort=True)[0]
    order = np.lexsort((ranks, bucket))
    bucket, key = bucket[order], key[order]
    first = np.ones(len(bucket), dtype=bool)
    first[1:] = bucket[1:] != bucket[:-1]
    starts = np.flatnonzero(first)
    centre = np.repeat(key[starts], np.diff(np.append(starts, len(key))))
    linked = ~first  # a lone member links nothing; the centre does not link to itself
    return _distinct_pairs(key[linked], centre[linked])


def _distinct_pairs(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``(src, dst)`` pairs, sorted by src then dst."""
    if not len(src):
        return src.astype(np.int64), dst.astype(np.int64)
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    new = np.ones(len(src), dtype=bool)
    new[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    return src[new], dst[new]


def _groups(node: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``(node, other)`` pairs without self-loops, sorted; the start of each node's run and
    its length."""
    keep = node != other
    node, other = _distinct_pairs(node[keep], other[keep])
    first = np.ones(len(node), dtype=bool)
    first[1:] = node[1:] != node[:-1]
    starts = np.flatnonzero(first)
    return node, other, starts, np.diff(np.append(starts, len(node)))


def large_star(node: np.ndarray, neighbour: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One large-star step of connected components over the edges of some nodes, each edge given in
    both directions (``node``, ``neighbour``) so that every node sees all its neighbours: each node
    links its larger neighbours to the smallest of itself and its neighbours.

    Returns the new edges ``(larger, smaller)`` and how many of them changed (an unchanged edge is
    one whose node was already the smallest). Kiveris et al., "Connected Components in MapReduce
    and Beyond" (2014); it and ``small_star`` alternate until neither changes an edge, when every
    component is a star around its smallest node.
    """
    node, neighbour, starts, sizes = _groups(node, neighbour)
    if not len(node):
        return node, neighbour, 0
    smallest = np.minimum(np.repeat(np.minimum.reduceat(neighbour, starts), sizes), node)
    larger = neighbour > node
    return neighbour[larger], smallest[larger], int(np.count_nonzero(smallest[larger] < node[larger]))


def small_star(node: np.ndarray, smaller: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One small-star step over edges given once as ``(node, smaller neighbour)``: each node and its
    smaller neighbours are linked to the smallest of them. Returns the new edges ``(larger, smaller)``
    and how many changed (all but one edge of a node with several smaller neighbours)."""
    node, smaller, starts, sizes = _groups(node, smaller)
    if not len(node):
        return node, smaller, 0
    least = np.minimum.reduceat(smaller, starts)
    spread = np.repeat(least, sizes)
    moved = smaller != spread
    return (np.concatenate([node[starts], smaller[moved]]), np.concatenate([least, spread[moved]]),
            int(np.sum(sizes - 1)))


def resolve_clusters(cluster: np.ndarray, doc: Any, score: np.ndarray, length: np.ndarray,
                     shingles: tuple[np.ndarray, np.ndarray], min_similarity: float) -> np.ndarray:
    """``near_dup`` of each member of some clusters: members visited best first (``best_first``); a
    member is a duplicate when the exact Jaccard of its shingles (``(values, offsets)``) with a member
    already kept reaches ``min_similarity`` (every member but the best, when it is 0), else it is
    kept. So each cluster keeps its best document and every removed one resembles a kept one."""
    members = pd.DataFrame({"cluster": cluster, "doc": doc, "score": score, "length": length})
    order = best_first(members, "cluster")
    values, offsets = shingles
    dup = np.zeros(len(members), dtype=bool)
    kept: list[np.ndarray] = []
    for k, row in enumerate(order):
        own = values[offsets[row]:offsets[row + 1]]
        if k == 0 or cluster[row] != cluster[order[k - 1]]:
            kept = [own]  # the best member of a new cluster
        elif min_similarity <= 0 or any(jaccard(other, own) >= min_similarity for other in kept):
            dup[row] = True
        else:
            kept.append(own)
    return dup
