"""The tokens, words, lines and paragraphs of a batch of texts, found over the batch's UTF-8 bytes.

What the heuristics measure, by Python's own rules, for a whole batch at once and with no Python
object per token or line:

- a *token* is a run of non-whitespace characters (``str.split()``; whitespace is ``str.isspace``);
- a *word* is a run of ``re``'s ``\\w`` characters (letters, digits, ``_``), read in the lowercased
  text (``re.findall(r"\\w+", text.lower())``);
- a *line* is a piece of ``text.split("\\n")`` stripped of whitespace (``str.strip``), if not empty;
- a *paragraph* is a piece of ``re.split(r"\\n{2,}", text)`` stripped, if not empty.

Every byte is classified from two tables: one for ASCII, and one for the batch's distinct non-ASCII
characters, made by asking Python about each (so the classes are Python's, whatever Unicode tables
Arrow or numpy have); a character's class is spread over its bytes. Tokens, words, lines and
paragraphs are then byte ranges, found with a few passes of numpy over the bytes; a line or
paragraph is a run of tokens, so stripping needs no pass of its own.

Lowercasing is a character-for-character map, applied to the bytes, for every character whose
``str.lower`` is one character of the same UTF-8 width and the same word class (every letter of
the European scripts). A document with another character ("İ" lowers to two, a final "Σ" to "ς"
by context, the Kelvin sign to an ASCII "k") has ``lower_exact`` False: a filter whose measure
reads the lowercased text computes it for that document with its per-document rules.
"""

from __future__ import annotations

import re
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa

from filters.normalize import utf8_buffers

_WORD = re.compile(r"\w", re.UNICODE)
_ALPHA = re.compile(r"[^\W\d_]", re.UNICODE)

# byte classes (bits): a byte takes its character's class
WHITESPACE, WORD, ALPHA, CONTINUATION = 1, 2, 4, 8
NEWLINE = 10


def _char_class(char: str) -> int:
    return (WHITESPACE * char.isspace()) | (WORD * bool(_WORD.match(char))) | (ALPHA * bool(_ALPHA.match(char)))


_ASCII_CLASS = np.array([_char_class(chr(b)) for b in range(128)] + [0] * 128, dtype=np.uint8)
_ASCII_LOWER = np.array([ord(chr(b).lower()) for b in range(128)] + list(range(128, 256)), dtype=np.uint8)
_CLASS_CACHE: dict[int, tuple[int, bytes | None]] = {}


def _non_ascii_class(code: int) -> tuple[int, bytes | None]:
    """(class, UTF-8 bytes of its lowercase or None when lowercasing is not a same-width map) of a character."""
    found = _CLASS_CACHE.get(code)
    if found is None:
        char = chr(code)
        lower = char.lower()
        same = (len(lower) == 1 and not lower.isascii() and code != 0x3A3  # "Σ": "ς" or "σ" by context
                and len(lower.encode()) == len(char.encode())
                and bool(_WORD.match(lower)) == bool(_WORD.match(char)))
        found = _CLASS_CACHE[code] = (_char_class(char), lower.encode() if same else None)
    return found


def code_points(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The code point of the character whose UTF-8 encoding starts at each position ``at`` of ``data``."""
    b0 = data[at].astype(np.uint32)
    length = np.where(b0 < 0x80, 1, np.where(b0 >= 0xF0, 4, np.where(b0 >= 0xE0, 3, 2)))
    code = b0 & np.where(length == 1, 0x7F, np.where(length == 4, 0x07, np.where(length == 3, 0x0F, 0x1F))).astype(
        np.uint32)
    for k in (1, 2, 3):  # shift in the continuation bytes of the characters that have a k-th one
        follow = data[np.minimum(at + k, len(data) - 1)].astype(np.uint32) & np.uint32(0x3F)
        code = np.where(length > k, (code << np.uint32(6)) | follow, code)
    return code


def runs(flag: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)`` of the maximal runs of True in ``flag``, a run also cut at each of ``starts``
    (the texts' first bytes)."""
    edges = np.flatnonzero(flag[1:] != flag[:-1])
    edges += 1
    if len(flag) and flag[0]:
        edges = np.insert(edges, 0, 0)
    if len(flag) and flag[-1]:
        edges = np.append(edges, len(flag))
    begin, end = edges[0::2], edges[1::2]  # the class changes at every edge: runs begin and end by turns
    cut = starts[(starts > 0) & flag[starts] & flag[starts - 1]]  # a run that goes on into the next text
    if len(cut):
        begin = np.insert(begin, np.searchsorted(begin, cut), cut)
        end = np.insert(end, np.searchsorted(end, cut), cut)
    return begin, end


def first_occurrences(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes, counts of each code, is the first occurrence of its key)``: codes number the
    distinct keys in the order of their first occurrence."""
    codes, _ = pd.factorize(keys.view(np.int64) if keys.dtype == np.uint64 else keys)  # int64: ~2x uint64
    counts = np.bincount(codes) if len(codes) else np.zeros(0, dtype=np.int64)
    seen = np.maximum.accumulate(codes) if len(codes) else codes
    first = np.ones(len(codes), dtype=bool)
    first[1:] = codes[1:] > seen[:-1]
    return codes, counts, first


_CHAINED_BYTES = 1024
_DOC_SALT = np.uint64(0xC2B2AE3D27D4EB4F)  # odd: spreads text numbers over the key space
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def fmix64(h: np.ndarray) -> np.ndarray:
    """The MurmurHash3 64-bit finalizer of ``h`` (uint64), in place."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def packed(padded: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each range as a little-endian uint64, bytes past the range zeroed: for a
    range of up to 8 bytes, its bytes exactly (``padded`` has 8 bytes past its data)."""
    view = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    return view[starts] & _LOW_BYTES.take(ends - starts, mode="clip")


def range_hashes(padded: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """uint64 hash of each byte range of ``padded``, equal for equal bytes, in this process: the bytes 8 at
    a time through the MurmurHash3 finalizer, chained with the length (up to 8 bytes, a bijection of
    the bytes); a range past ``_CHAINED_BYTES``, rare, by Python's hash of its bytes (salted per process)."""
    view = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    h = packed(padded, starts, ends)
    lengths = ends - starts
    longer = np.flatnonzero(lengths > 8)
    if len(longer):
        start, length = starts[longer], lengths[longer]
        chain = h[longer] ^ (length.astype(np.uint64) * _GOLDEN)
        middle, read = np.flatnonzero(length > 16), 8
        while len(middle) and read < _CHAINED_BYTES:
            chain[middle] = fmix64(chain[middle]) ^ view[start[middle] + read]
            read += 8
            middle = middle[length[middle] > read + 8]
        chain = fmix64(chain) ^ view[ends[longer] - 8]
        h[longer] = chain
        for k in np.flatnonzero(length > _CHAINED_BYTES).tolist():
            h[longer[k]] = hash(padded[start[k]:start[k] + length[k]].tobytes()) & 0xFFFFFFFFFFFFFFFF
    return fmix64(h)


class Segments:
    """The segments of a batch of texts (an Arrow large_string array without nulls); every array
    of a kind (``token_*``, ``word_*``, ``line_*``, ``para_*``) is in text order, byte positions are
    into ``data``. Each kind is found when first read."""

    def __init__(self, texts: pa.Array):
        offsets, data = utf8_buffers(texts)
        self.docs = len(texts)
        self.offsets = (offsets - offsets[0]).astype(np.int64)
        size = self.size = int(self.offsets[-1])
        self.data = np.zeros(size + 8, dtype=np.uint8)  # 8 zero bytes: a uint64 reads at any byte
        self.data[:size] = data[offsets[0]:offsets[-1]]
        text = self.data[:size]
        self.ascii = not size or int(text.max()) < 0x80
        self.classes = np.take(_ASCII_CLASS, text)
        self.lower = np.zeros(size + 8, dtype=np.uint8)  # the lowercased bytes, padded like data
        np.take(_ASCII_LOWER, text, out=self.lower[:size])
        self.lower_exact = np.ones(self.docs, dtype=bool)
        """Per text: whether ``lower`` holds its ``str.lower()``."""
        if not self.ascii:
            self._classify_non_ascii(text)
        self.starts = self.offsets[:-1][self.offsets[1:] > self.offsets[:-1]]  # of the texts that are not empty

    def _classify_non_ascii(self, text: np.ndarray) -> None:
        high = np.flatnonzero(text >= 0x80)
        is_lead = (text[high] & 0xC0) != 0x80
        leads = high[is_lead]
        which, distinct = pd.factorize(code_points(text, leads))
        found = [_non_ascii_class(c) for c in distinct.tolist()]
        lead = text[leads]
        width = np.where(lead >= 0xF0, 4, np.where(lead >= 0xE0, 3, 2))
        classes = np.array([c for c, _ in found], dtype=np.uint8)[which]
        # valid UTF-8: the high bytes are each lead followed by its continuation bytes
        self.classes[high] = np.repeat(classes, width) | np.where(is_lead, 0, CONTINUATION).astype(np.uint8)
        # lowercase: each character's bytes replaced by its lowercase's, where that is a same-width map
        same = np.array([low is not None for _, low in found], dtype=bool)
        table = np.zeros((len(distinct), 4), dtype=np.uint8)
        for k, (_, low) in enumerate(found):
            if low is not None:
                table[k, :len(low)] = np.frombuffer(low, dtype=np.uint8)
        mapped = same[which]
        for k in range(4):
            some = mapped & (width > k)
            self.lower[leads[some] + k] = table[which[some], k]
        if not mapped.all():  # those texts are measured by the per-document rules
            self.lower_exact[np.unique(self.doc_of(leads[~mapped]))] = False

    def find_lines(self) -> Segments:
        """Find the tokens and lines now; returns self."""
        _ = self.line_start
        return self

    # --- characters ----------------------------------------------------------------------------

    def _cumulative(self, bit: int) -> np.ndarray:
        """How many bytes before each position (0 .. size) have class ``bit``."""
        counts = np.zeros(self.size + 1, dtype=np.int32)
        np.cumsum((self.classes & bit) != 0, out=counts[1:])
        return counts

    @cached_property
    def _continuations(self) -> np.ndarray:
        return self._cumulative(CONTINUATION)

    def chars(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Characters in each byte range."""
        if self.ascii:
            return ends - starts
        return (ends - starts) - (self._continuations[ends] - self._continuations[starts])

    def doc_of(self, positions: np.ndarray) -> np.ndarray:
        """The text each byte position is in."""
        return np.searchsorted(self.offsets, positions, side="right") - 1

    def doc_of_sorted(self, positions: np.ndarray) -> np.ndarray:
        """``doc_of`` of sorted positions: a search per text, not per position."""
        return np.repeat(np.arange(self.docs), np.diff(np.searchsorted(positions, self.offsets)))

    def per_doc(self, docs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Sum of integer ``weights`` (or the count) per text."""
        total = np.bincount(docs, weights=weights, minlength=self.docs)
        return total if weights is None else total.astype(np.int64)

    @cached_property
    def text_chars(self) -> np.ndarray:
        """``len(text)``."""
        return self.chars(self.offsets[:-1], self.offsets[1:])

    def find_bytes(self, byte: int) -> np.ndarray:
        """Positions of an ASCII character."""
        return np.flatnonzero(self.data[:self.size] == byte)

    def count_bytes(self, byte: int) -> np.ndarray:
        """``text.count(chr(byte))`` of an ASCII character."""
        return self.per_doc(self.doc_of_sorted(self.find_bytes(byte)))

    def count_sequence(self, sequence: bytes) -> np.ndarray:
        """Occurrences per text of ``sequence``, the UTF-8 bytes of one character (they never overlap)."""
        at = self.find_bytes(sequence[-1]) - (len(sequence) - 1)  # its last byte is the rarest
        at = at[at >= 0]
        for k in range(len(sequence) - 1):
            at = at[self.data[at + k] == sequence[k]]
        return self.per_doc(self.doc_of_sorted(at))

    @cached_property
    def _lower_bytes(self) -> bytes:
        return self.lower[:self.size].tobytes()

    def find_lower(self, needle: bytes) -> np.ndarray:
        """Byte positions of every occurrence of ASCII ``needle`` in the lowercased texts (an occurrence
        that spans two texts included: check it ends in the text it starts in)."""
        haystack, found = self._lower_bytes, []
        at = haystack.find(needle)
        while at >= 0:
            found.append(at)
            at = haystack.find(needle, at + 1)
        return np.array(found, dtype=np.int64)

    # --- tokens, words, lines, paragraphs ------------------------------------------------------

    @cached_property
    def _tokens(self) -> tuple[np.ndarray, np.ndarray]:
        return runs((self.classes[:self.size] & WHITESPACE) == 0, self.starts)

    @property
    def token_start(self) -> np.ndarray:
        return self._tokens[0]

    @property
    def token_end(self) -> np.ndarray:
        return self._tokens[1]

    @cached_property
    def token_doc(self) -> np.ndarray:
        return self.doc_of_sorted(self.token_start)

    @cached_property
    def token_chars(self) -> np.ndarray:
        return self.chars(self.token_start, self.token_end)

    def tokens_with(self, bit: int) -> np.ndarray:
        """Per token, whether a character of it has class ``bit`` (``WORD``, ``ALPHA``)."""
        counts = self._cumulative(bit)
        return counts[self.token_end] > counts[self.token_start]

    @cached_property
    def _words(self) -> tuple[np.ndarray, np.ndarray]:
        return runs((self.classes[:self.size] & WORD) != 0, self.starts)

    @property
    def word_start(self) -> np.ndarray:
        return self._words[0]

    @property
    def word_end(self) -> np.ndarray:
        return self._words[1]

    @cached_property
    def word_doc(self) -> np.ndarray:
        return self.doc_of_sorted(self.word_start)

    @cached_property
    def word_hashes(self) -> np.ndarray:
        """uint64 hash of each lowercased word."""
        return range_hashes(self.lower, self.word_start, self.word_end)

    def _runs_of_tokens(self, breaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last token of each run of tokens that no byte position of ``breaks`` and no new
        text separates."""
        starts = self.token_start
        new = np.zeros(len(starts) + 1, dtype=bool)
        new[np.searchsorted(starts, breaks)] = True  # the first token past each break
        new[np.searchsorted(starts, self.offsets)] = True
        first = np.flatnonzero(new[:-1])
        return first, np.append(first[1:], len(starts)) - 1

    @cached_property
    def _lines(self) -> tuple[np.ndarray, np.ndarray]:
        return self._runs_of_tokens(self.find_bytes(NEWLINE))

    @property
    def line_first_token(self) -> np.ndarray:
        return self._lines[0]

    @property
    def line_last_token(self) -> np.ndarray:
        return self._lines[1]

    @cached_property
    def line_start(self) -> np.ndarray:
        return self.token_start[self.line_first_token]

    @cached_property
    def line_end(self) -> np.ndarray:
        return self.token_end[self.line_last_token]

    @cached_property
    def line_doc(self) -> np.ndarray:
        return self.token_doc[self.line_first_token]

    @cached_property
    def line_chars(self) -> np.ndarray:
        return self.chars(self.line_start, self.line_end)

    @cached_property
    def line_hashes(self) -> np.ndarray:
        return range_hashes(self.data, self.line_start, self.line_end)

    @cached_property
    def lines(self) -> np.ndarray:
        """Lines per text."""
        return self.per_doc(self.line_doc)

    @cached_property
    def _paragraphs(self) -> tuple[np.ndarray, np.ndarray]:
        newlines = self.find_bytes(NEWLINE)
        return self._runs_of_tokens(newlines[:-1][np.diff(newlines) == 1])  # the pairs of each "\n\n+" run

    @cached_property
    def para_start(self) -> np.ndarray:
        return self.token_start[self._paragraphs[0]]

    @cached_property
    def para_end(self) -> np.ndarray:
        return self.token_end[self._paragraphs[1]]

    @cached_property
    def para_doc(self) -> np.ndarray:
        return self.token_doc[self._paragraphs[0]]

    @cached_property
    def para_hashes(self) -> np.ndarray:
        return range_hashes(self.data, self.para_start, self.para_end)

    def duplicated(self, docs: np.ndarray, hashes: np.ndarray, chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per text: (number, characters) of the elements (``docs``, ``hashes``, ``chars`` each) that repeat
        an earlier element of the same text."""
        _, _, first = first_occurrences(hashes ^ (docs.astype(np.uint64) * _DOC_SALT))
        again = ~first
        return self.per_doc(docs[again]), self.per_doc(docs[again], chars[again])
