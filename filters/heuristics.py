"""Rule-based quality heuristics: Gopher quality and repetition, C4 line rules, FineWeb ratios.

Defaults are the published ones (Rae et al. 2021 "Gopher" appendix A; Raffel et al. 2020 "C4";
Penedo et al. 2024 "FineWeb"), as datatrove ships them. Each filter stores its measurements as
columns, prefixed by the filter's name, and rejects with a reason such as ``gopher:stop_words``.

Each filter states its rules per document (``score_text``, Python strings) and measures a batch
over the tokens, words, lines and paragraphs ``filters.segments`` finds in the batch's bytes
(``score_segments``), to the same numbers: no Python object per token or line. ``score_heuristics``
segments a batch once for every filter. A document whose lowercasing the segments cannot map
(see ``filters.segments``) is measured by the per-document rules where a filter reads lowercase.
"""

from __future__ import annotations

import re
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from filters.base import TEXT, RowFilter, Rule, first_failure
from filters.normalize import arrow_texts, utf8_buffers
from filters.segments import (
    ALPHA,
    CONTINUATION,
    WORD,
    Segments,
    code_points,
    first_occurrences,
    fmix64,
    packed,
)

_WORD = re.compile(r"\w+", re.UNICODE)
_ALPHA = re.compile(r"[^\W\d_]", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?]+(?:[\"')\]]*)(?=\s|$)")
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_DOC_MULTIPLIER = np.uint64(0xC2B2AE3D27D4EB4F)  # odd: spreads document numbers over the key space
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: mixes a word's position into an n-gram's hash
BULLETS = ("•", "●", "‣", "–", "-", "*", "·")
ELLIPSES = ("...", "…")
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’", "…", "。", "！", "？", "»", ")", ":", ";")
C4_END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                     "use of cookies", "use cookies")
# Text per segmentation: its arrays stay small whatever the partition's size, and the hash tables that
# group n-grams stay in cache (1 MB: ~40% faster than 4 MB)
_SPLIT_BYTES = 1 << 20


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def duplicated(elements: Sequence[str]) -> tuple[int, int]:
    """(number, total characters) of elements that repeat an earlier element."""
    seen: set[str] = set()
    count = chars = 0
    for e in elements:
        if e in seen:
            count += 1
            chars += len(e)
        else:
            seen.add(e)
    return count, chars


def repeated_ngrams(hashes: np.ndarray, chars: np.ndarray, owner: np.ndarray, documents: int,
                    top_sizes: Sequence[int], dup_sizes: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per n of ``top_sizes`` or ``dup_sizes``, two int64 arrays over ``documents``: for n in ``top_sizes``,
    characters of the most frequent n-gram times its count, if it repeats (ties: the earliest n-gram);
    for n in ``dup_sizes``, characters of words covered by repeats of an earlier n-gram, each word
    counted once (zeros for a measure not asked). A character count includes one separating space per word.

    The words of every document at once, in order: ``hashes`` (uint64, equal for equal words),
    ``chars`` per word, ``owner`` (the document of each word, non-decreasing). An n-gram can repeat
    only where its first n-1 words repeat, so each size looks only at the starts of the repeated
    (n-1)-grams: on prose, a small share of the words past n = 3.
    """
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    sizes = set(top_sizes) | set(dup_sizes)
    lengths = chars.astype(np.int64) + 1
    cumulative = np.concatenate([[0], np.cumsum(lengths)])
    at = np.arange(len(hashes))  # the starts that can still begin a repeated n-gram
    left = np.cumsum(np.bincount(owner, minlength=documents))[owner] - at  # words from each start to its text's end
    # the text's number is in every n-gram's hash from its first word: n-grams of two texts never meet
    grams = fmix64(hashes ^ (owner.astype(np.uint64) * _DOC_MULTIPLIER))
    for n in range(1, max(sizes, default=0) + 1):
        if n > 1:
            with np.errstate(over="ignore"):  # extend each kept start by its next word
                grams = fmix64(grams * _MULTIPLIER + hashes[at + n - 1])
        elif n not in sizes:  # then grouping words costs more than it saves: every start goes on
            keep = left > n
            at, grams, left = at[keep], grams[keep], left[keep]
            continue
        codes, counts, first = first_occurrences(grams)
        repeated = counts[codes] > 1
        if n in sizes:
            top = np.zeros(documents, dtype=np.int64)
            dup = np.zeros(documents, dtype=np.int64)
            if n in top_sizes and repeated.any():
                # per text its most frequent repeated n-gram, the earliest of equals: first occurrences
                # are in text order, so the first with the text's highest count
                lead = np.flatnonzero(first & repeated)
                doc, count = owner[at[lead]], counts[codes[lead]]
                bounds = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
                most = np.repeat(np.maximum.reduceat(count, bounds), np.diff(np.append(bounds, len(doc))))
                best = np.flatnonzero(count == most)
                best = best[np.r_[True, doc[best][1:] != doc[best][:-1]]]
                start = at[lead[best]]
                top[doc[best]] = (cumulative[start + n] - cumulative[start] - 1) * count[best]
            if n in dup_sizes and repeated.any():
                repeats = at[repeated & ~first]
                if len(repeats) * n < len(hashes) // 8:  # few: the words they cover, directly
                    covered = np.unique((repeats[:, None] + np.arange(n)).ravel())
                else:
                    cover = np.zeros(len(hashes) + 1, dtype=np.int32)
                    cover[repeats] += 1  # starts are distinct, and so are ends: no add.at needed
                    cover[repeats + n] -= 1
                    covered = np.flatnonzero(np.cumsum(cover[:-1]) > 0)
                dup = np.bincount(owner[covered], weights=lengths[covered], minlength=documents).astype(np.int64)
            out[n] = (top, dup)
        keep = repeated & (left > n)  # a repeated n-gram that has a next word in its text
        at, grams, left = at[keep], grams[keep], left[keep]
    return out


def repeated_ngram_chars(documents: Sequence[Sequence[str]], top_sizes: Sequence[int],
                         dup_sizes: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``repeated_ngrams`` of documents given as token lists (words compared by Python's hash)."""
    counts = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
    tokens = [t for doc in documents for t in doc]
    hashes = np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)).view(np.uint64)
    chars = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    owner = np.repeat(np.arange(len(documents)), counts)
    return repeated_ngrams(hashes, chars, owner, len(documents), top_sizes, dup_sizes)


class HeuristicFilter(RowFilter):
    """A heuristic measured over a batch's segments, to the numbers of its per-document rules (``score_text``)."""

    lowercase: ClassVar[bool] = True
    """Whether a measure reads the lowercased text (then documents the segments cannot lowercase
    are measured by the per-document rules)."""

    def score(self, batch: pd.DataFrame) -> pd.DataFrame:
        return score_heuristics([self], batch[TEXT])[0]

    @abstractmethod
    def score_segments(self, segments: Segments) -> dict[str, np.ndarray]:
        """The float64 score columns of the texts of ``segments``."""

    def score_texts(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The score columns of ``texts`` by the per-document rules."""
        rows = [self.score_text(t) for t in texts]
        return {c: np.array([r[c] for r in rows], dtype=np.float64) for c in self.columns()}


@contextmanager
def _timed(clock: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - start


def _chunks(arr: pa.Array) -> Iterator[pa.Array]:
    """``arr`` as consecutive slices of about ``_SPLIT_BYTES`` of text (a longer text alone)."""
    offsets, _ = utf8_buffers(arr)
    cuts = np.searchsorted(offsets, np.arange(offsets[0] + _SPLIT_BYTES, offsets[-1], _SPLIT_BYTES))
    cuts = np.unique([0, *cuts.tolist(), len(arr)])
    for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
        yield arr.slice(lo, hi - lo)


def score_heuristics(filters: Sequence[HeuristicFilter], texts: pd.Series,
                     clock: dict[str, float] | None = None) -> list[pd.DataFrame]:
    """The score columns of each of ``filters`` for ``texts``, indexed like them, from one segmentation
    of every ~4 MB of text that all the filters share. ``clock``, if given, receives the seconds of
    ``segments`` and of each filter."""
    clock = {} if clock is None else clock
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in filters]
    arr = arrow_texts(texts)
    if arr is None:  # a lone surrogate, which Arrow cannot hold: the per-document rules
        for f, out in zip(filters, parts, strict=True):
            with _timed(clock, f.name):
                out.append(f.score_texts([t if isinstance(t, str) else "" for t in texts]))
        arr = pa.array([], type=pa.large_string())
    for chunk in _chunks(arr) if len(arr) else ():
        with _timed(clock, "segments"):
            segments = Segments(chunk).find_lines()  # every heuristic reads the tokens and lines
        for f, out in zip(filters, parts, strict=True):
            with _timed(clock, f.name):
                columns = f.score_segments(segments)
                if f.lowercase and not segments.lower_exact.all():
                    odd = np.flatnonzero(~segments.lower_exact)
                    for name, values in f.score_texts(chunk.take(pa.array(odd)).to_pylist()).items():
                        columns[name][odd] = values
                out.append(columns)
    return [pd.DataFrame({c: np.concatenate([p[c] for p in out]) if out else np.zeros(0) for c in f.columns()},
                         index=texts.index, dtype="float64") for f, out in zip(filters, parts, strict=True)]


def _ends_with(segments: Segments, starts: np.ndarray, ends: np.ndarray, suffixes: Sequence[str]) -> np.ndarray:
    """Whether each byte range ends with one of ``suffixes`` (UTF-8 is self-synchronising: bytes suffice)."""
    data = segments.data
    found = np.zeros(len(ends), dtype=bool)
    for suffix in suffixes:
        tail = suffix.encode()
        hit = ends - starts >= len(tail)
        for k, byte in enumerate(tail):
            hit &= data[ends - len(tail) + k] == byte
        found |= hit
    return found


def _last_chars(segments: Segments, ends: np.ndarray) -> np.ndarray:
    """The code point of the last character of each (non-empty) byte range ending at ``ends``."""
    at = ends - 1
    for _ in range(3):  # back over the continuation bytes of a character of up to 4 bytes
        inside = (segments.classes[at] & CONTINUATION) != 0
        at = at - inside
    return code_points(segments.data, at)


def _lines_with(segments: Segments, needles: Sequence[str]) -> np.ndarray:
    """Per line, whether its lowercase holds one of the ASCII ``needles``."""
    hit = np.zeros(len(segments.line_start), dtype=bool)
    for needle in needles:
        at = segments.find_lower(needle.encode())
        line = np.searchsorted(segments.line_start, at, side="right") - 1
        inside = line >= 0
        line, at = line[inside], at[inside]
        hit[line[at + len(needle) <= segments.line_end[line]]] = True
    return hit


def _texts_with(segments: Segments, needle: str) -> np.ndarray:
    """Per text, whether its lowercase holds the ASCII ``needle``."""
    at = segments.find_lower(needle.encode())
    doc = segments.doc_of(at)
    found = np.zeros(segments.docs, dtype=bool)
    found[doc[doc == segments.doc_of(at + len(needle) - 1)]] = True
    return found


def _code_set(chars: Sequence[str]) -> np.ndarray:
    return np.array(sorted(ord(c) for c in chars), dtype=np.uint32)


_BULLET_CODES = _code_set(BULLETS)
_TERMINAL_CODES = _code_set(TERMINAL_PUNCTUATION)
_STOP_PACKED = np.array(sorted(int.from_bytes(w.encode(), "little") for w in STOP_WORDS), dtype=np.uint64)
_STOP_BYTES = sorted({len(w) for w in STOP_WORDS})
_CLOSING = np.zeros(256, dtype=bool)  # what may follow a sentence's end mark: _SENTENCE_END's classes
_CLOSING[[ord(c) for c in ".!?\"')]"]] = True
_END_MARK = np.zeros(256, dtype=bool)
_END_MARK[[ord(c) for c in ".!?"]] = True


class GopherQuality(HeuristicFilter):
    """Gopher quality rules: word count and length, symbols, bullets, ellipses, alphabetic words, stop words."""

    name: ClassVar[str] = "gopher"
    stage: ClassVar[str] = "heuristics"
    reasons: ClassVar[tuple[str, ...]] = (
        "gopher:too_few_words", "gopher:too_many_words", "gopher:short_words", "gopher:long_words",
        "gopher:symbols", "gopher:bullet_lines", "gopher:ellipsis_lines", "gopher:non_alpha_words",
        "gopher:stop_words")

    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2

    def score_text(self, text: str) -> dict[str, float]:
        tokens = text.split()
        words = [t for t in tokens if _WORD.search(t)]  # tokens that are not pure punctuation
        lines = _lines(text) or [""]
        n = max(len(tokens), 1)
        return {
            "gopher_words": len(words),
            "gopher_avg_word_length": sum(map(len, words)) / len(words) if words else 0.0,
            "gopher_symbol_ratio": (text.count("#") + text.count("...") + text.count("…")) / n,
            "gopher_bullet_lines": sum(line.startswith(BULLETS) for line in lines) / len(lines),
            "gopher_ellipsis_lines": sum(line.endswith(ELLIPSES) for line in lines) / len(lines),
            "gopher_alpha_words": sum(bool(_ALPHA.search(t)) for t in tokens) / n,
            "gopher_stop_words": sum(1 for w in _WORD.findall(text.lower()) if w in STOP_WORDS),
        }

    def score_segments(self, segments: Segments) -> dict[str, np.ndarray]:
        seg = segments
        n = np.maximum(seg.per_doc(seg.token_doc), 1)
        is_word = seg.tokens_with(WORD)
        words = seg.per_doc(seg.token_doc[is_word])
        word_chars = seg.per_doc(seg.token_doc[is_word], seg.token_chars[is_word])
        lines = np.maximum(seg.lines, 1)  # a text without lines counts one empty line
        dots = seg.find_bytes(ord("."))
        run = np.flatnonzero(np.r_[True, np.diff(dots) != 1] | np.isin(dots, seg.starts))  # runs of dots
        ends = np.append(run[1:], len(dots))
        triples = seg.per_doc(seg.doc_of_sorted(dots[run]), (ends - run) // 3)  # count("...")
        symbols = seg.count_bytes(ord("#")) + triples + seg.count_sequence("…".encode())
        bullets = np.isin(code_points(seg.data, seg.line_start), _BULLET_CODES)
        ellipses = _ends_with(seg, seg.line_start, seg.line_end, ELLIPSES)
        length = seg.word_end - seg.word_start
        short = np.flatnonzero((length >= _STOP_BYTES[0]) & (length <= _STOP_BYTES[-1]))
        word = packed(seg.lower, seg.word_start[short], seg.word_end[short])
        stop = short[np.isin(word, _STOP_PACKED)]
        return {
            "gopher_words": words.astype(np.float64),
            "gopher_avg_word_length": np.divide(word_chars, words, out=np.zeros(seg.docs), where=words > 0),
            "gopher_symbol_ratio": symbols / n,
            "gopher_bullet_lines": seg.per_doc(seg.line_doc[bullets]) / lines,
            "gopher_ellipsis_lines": seg.per_doc(seg.line_doc[ellipses]) / lines,
            "gopher_alpha_words": seg.per_doc(seg.token_doc[seg.tokens_with(ALPHA)]) / n,
            "gopher_stop_words": seg.per_doc(seg.word_doc[stop]).astype(np.float64),
        }

    def keep(self, scores: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        rules: list[Rule] = [
            ("gopher:too_few_words", lambda s: s.gopher_words < self.min_doc_words),
            ("gopher:too_many_words", lambda s: s.gopher_words > self.max_doc_words),
            ("gopher:short_words", lambda s: s.gopher_avg_word_length < self.min_avg_word_length),
            ("gopher:long_words", lambda s: s.gopher_avg_word_length > self.max_avg_word_length),
            ("gopher:symbols", lambda s: s.gopher_symbol_ratio > self.max_symbol_word_ratio),
            ("gopher:bullet_lines", lambda s: s.gopher_bullet_lines > self.max_bullet_lines_ratio),
            ("gopher:ellipsis_lines", lambda s: s.gopher_ellipsis_lines > self.max_ellipsis_lines_ratio),
            ("gopher:non_alpha_words", lambda s: s.gopher_alpha_words < self.min_alpha_words_ratio),
            ("gopher:stop_words", lambda s: s.gopher_stop_words < self.min_stop_words),
        ]
        return first_failure(scores, rules)


class GopherRepetition(HeuristicFilter):
    """Gopher repetition rules: duplicated lines/paragraphs, top n-grams and duplicated n-grams."""

    name: ClassVar[str] = "gopher_rep"
    stage: ClassVar[str] = "heuristics"
    reasons: ClassVar[tuple[str, ...]] = (
        "gopher_rep:dup_para", "gopher_rep:dup_para_chars", "gopher_rep:dup_line", "gopher_rep:dup_line_chars",
        "gopher_rep:top_*gram", "gopher_rep:dup_*gram")
    score_fields: ClassVar[tuple[str, ...]] = ("top_n_grams", "dup_n_grams")

    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: dict[int, float] = {2: 0.2, 3: 0.18, 4: 0.16}
    dup_n_grams: dict[int, float] = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}

    def score_segments(self, segments: Segments) -> dict[str, np.ndarray]:
        seg = segments
        size = np.maximum(seg.text_chars, 1).astype(np.float64)
        paragraphs = np.maximum(seg.per_doc(seg.para_doc), 1)  # a text without any counts one empty one
        para_dups, para_chars = seg.duplicated(seg.para_doc, seg.para_hashes, seg.chars(seg.para_start, seg.para_end))
        line_dups, line_chars = seg.duplicated(seg.line_doc, seg.line_hashes, seg.line_chars)
        columns = {
            "rep_dup_para_frac": para_dups / paragraphs,
            "rep_dup_para_char_frac": para_chars / size,
            "rep_dup_line_frac": line_dups / np.maximum(seg.lines, 1),
            "rep_dup_line_char_frac": line_chars / size,
        }
        repeated = repeated_ngrams(seg.word_hashes, seg.chars(seg.word_start, seg.word_end), seg.word_doc, seg.docs,
                                   list(self.top_n_grams), list(self.dup_n_grams))
        return self._ngram_columns(columns, repeated, size)

    def score_texts(self, texts: list[str]) -> dict[str, np.ndarray]:
        size = np.fromiter((max(len(t), 1) for t in texts), dtype=np.float64, count=len(texts))
        rows = [self._line_scores(t) for t in texts]
        columns = {c: np.array([r[c] for r in rows], dtype=np.float64) for c in
                   ("rep_dup_para_frac", "rep_dup_para_char_frac", "rep_dup_line_frac", "rep_dup_line_char_frac")}
        repeated = repeated_ngram_chars([_WORD.findall(t.lower()) for t in texts], list(self.top_n_grams),
                                        list(self.dup_n_grams))
        return self._ngram_columns(columns, repeated, size)

    def _ngram_columns(self, columns: dict[str, np.ndarray], repeated: dict[int, tuple[np.ndarray, np.ndarray]],
                       size: np.ndarray) -> dict[str, np.ndarray]:
        zeros = np.zeros(len(size), dtype=np.int64)
        for n in sorted(self.top_n_grams):
            columns[f"rep_top_{n}gram"] = repeated.get(n, (zeros, zeros))[0] / size
        for n in sorted(self.dup_n_grams):
            columns[f"rep_dup_{n}gram"] = repeated.get(n, (zeros, zeros))[1] / size
        return columns

    def score_text(self, text: str) -> dict[str, float]:
        return {c: float(v[0]) for c, v in self.score_texts([text]).items()}

    @staticmethod
    def _line_scores(text: str) -> dict[str, float]:
        size = max(len(text), 1)
        paragraphs = [p.strip() for p in re.split(r"\n{2,}", text) if p.strip()] or [""]
        lines = _lines(text) or [""]
        para_dups, para_chars = duplicated(paragraphs)
        line_dups, line_chars = duplicated(lines)
        return {
            "rep_dup_para_frac": para_dups / len(paragraphs),
            "rep_dup_para_char_frac": para_chars / size,
            "rep_dup_line_frac": line_dups / len(lines),
            "rep_dup_line_char_frac": line_chars / size,
        }

    def keep(self, scores: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        rules: list[Rule] = [
            ("gopher_rep:dup_para", lambda s: s.rep_dup_para_frac > self.dup_para_frac),
            ("gopher_rep:dup_para_chars", lambda s: s.rep_dup_para_char_frac > self.dup_para_char_frac),
            ("gopher_rep:dup_line", lambda s: s.rep_dup_line_frac > self.dup_line_frac),
            ("gopher_rep:dup_line_chars", lambda s: s.rep_dup_line_char_frac > self.dup_line_char_frac),
        ]
        for n, limit in sorted(self.top_n_grams.items()):
            rules.append((f"gopher_rep:top_{n}gram", lambda s, c=f"rep_top_{n}gram", t=limit: s[c] > t))
        for n, limit in sorted(self.dup_n_grams.items()):
            rules.append((f"gopher_rep:dup_{n}gram", lambda s, c=f"rep_dup_{n}gram", t=limit: s[c] > t))
        return first_failure(scores, rules)


class C4Lines(HeuristicFilter):
    """C4 rules: lines without terminal punctuation, short lines, javascript and policy lines are
    dropped; the page needs ``min_num_sentences`` in what is left, and no lorem ipsum or ``{``.

    The text itself is not rewritten: the kept fraction of lines is a score, so a corpus that
    needs C4's line cleaning can apply it later with the same rules.
    """

    name: ClassVar[str] = "c4"
    stage: ClassVar[str] = "heuristics"
    reasons: ClassVar[tuple[str, ...]] = ("c4:lorem_ipsum", "c4:curly_bracket", "c4:too_few_sentences")
    score_fields: ClassVar[tuple[str, ...]] = ("filter_no_terminal_punct", "min_words_per_line",
                                                "max_word_length", "filter_javascript", "filter_policy")

    filter_no_terminal_punct: bool = True
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_javascript: bool = True
    filter_policy: bool = True
    min_num_sentences: int = 5
    filter_lorem_ipsum: bool = True
    filter_curly_bracket: bool = True

    def line_kept(self, line: str) -> bool:
        """Whether C4 keeps a (stripped, citation-free) line."""
        words = line.split()
        lowered = line.lower()
        return not (
            (self.filter_no_terminal_punct and (not line.endswith(C4_END_PUNCTUATION) or line.endswith(ELLIPSES)))
            or len(words) < self.min_words_per_line
            or any(len(w) > self.max_word_length for w in words)
            or (self.filter_javascript and "javascript" in lowered)
            or (self.filter_policy and any(p in lowered for p in POLICY_SUBSTRINGS))
        )

    def score_text(self, text: str) -> dict[str, float]:
        lines = [_CITATION.sub("", line).strip() for line in _lines(text)]
        kept = [line for line in lines if self.line_kept(line)]
        return {
            "c4_kept_lines": len(kept) / len(lines) if lines else 0.0,
            "c4_sentences": sum(len(_SENTENCE_END.findall(line)) for line in kept),
            "c4_lorem_ipsum": float("lorem ipsum" in text.lower()),
            "c4_curly_bracket": float("{" in text),
        }

    def score_segments(self, segments: Segments) -> dict[str, np.ndarray]:
        seg = segments
        start, end, first, last = seg.line_start, seg.line_end, seg.line_first_token, seg.line_last_token
        kept = np.ones(len(start), dtype=bool)
        if self.filter_no_terminal_punct:
            kept &= np.isin(seg.data[end - 1], np.frombuffer("".join(C4_END_PUNCTUATION).encode(), dtype=np.uint8))
            kept &= ~_ends_with(seg, start, end, ELLIPSES)
        kept &= last - first + 1 >= self.min_words_per_line
        if len(first):
            kept &= np.maximum.reduceat(seg.token_chars, first) <= self.max_word_length  # a line's tokens are a run
        if self.filter_javascript:
            kept &= ~_lines_with(seg, ["javascript"])
        if self.filter_policy:
            kept &= ~_lines_with(seg, POLICY_SUBSTRINGS)
        # a sentence ends where a token ends in a run of .!?"')] that holds one of .!?
        at = seg.token_end - 1
        tail = np.flatnonzero(_CLOSING[seg.data[at]])
        ends_sentence = np.zeros(len(at), dtype=bool)
        at = at[tail]
        while len(tail):
            ends_sentence[tail] |= _END_MARK[seg.data[at]]
            at = at - 1
            more = (at >= seg.token_start[tail]) & _CLOSING[seg.data[at]]
            tail, at = tail[more], at[more]
        line_of_token = np.repeat(np.arange(len(first)), last - first + 1)
        sentences = np.bincount(line_of_token, weights=ends_sentence, minlength=len(first)).astype(np.int64)
        # a line with a "[" may hold a citation, whose removal changes it: those lines by the per-line rules
        brackets = np.flatnonzero(seg.data[:seg.size] == ord("["))
        line = np.searchsorted(start, brackets, side="right") - 1
        brackets, line = brackets[line >= 0], line[line >= 0]
        for i in np.unique(line[brackets < end[line]]).tolist():
            line = _CITATION.sub("", seg.data[start[i]:end[i]].tobytes().decode("utf-8")).strip()
            kept[i] = self.line_kept(line)
            sentences[i] = len(_SENTENCE_END.findall(line))
        lines = seg.lines
        return {
            "c4_kept_lines": np.divide(seg.per_doc(seg.line_doc[kept]), lines, out=np.zeros(seg.docs), where=lines > 0),
            "c4_sentences": seg.per_doc(seg.line_doc[kept], sentences[kept]).astype(np.float64),
            "c4_lorem_ipsum": _texts_with(seg, "lorem ipsum").astype(np.float64),
            "c4_curly_bracket": (seg.count_bytes(ord("{")) > 0).astype(np.float64),
        }

    def keep(self, scores: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        return first_failure(scores, [
            ("c4:lorem_ipsum", lambda s: (s.c4_lorem_ipsum > 0) & self.filter_lorem_ipsum),
            ("c4:curly_bracket", lambda s: (s.c4_curly_bracket > 0) & self.filter_curly_bracket),
            ("c4:too_few_sentences", lambda s: s.c4_sentences < self.min_num_sentences),
        ])


class FineWebQuality(HeuristicFilter):
    """FineWeb ratios: lines ending in punctuation, short lines, duplicated line characters, newlines per word."""

    name: ClassVar[str] = "fineweb"
    stage: ClassVar[str] = "heuristics"
    reasons: ClassVar[tuple[str, ...]] = ("fineweb:line_punct", "fineweb:short_lines", "fineweb:dup_line_chars",
                                          "fineweb:newlines")
    score_fields: ClassVar[tuple[str, ...]] = ("short_line_length",)
    lowercase: ClassVar[bool] = False

    line_punct_thr: float = 0.12
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3

    def score_text(self, text: str) -> dict[str, float]:
        lines = _lines(text)
        if not lines:
            return {"fw_line_punct": 0.0, "fw_short_lines": 1.0, "fw_dup_chars": 0.0, "fw_newlines": 0.0}
        words = max(len(text.split()), 1)
        return {
            "fw_line_punct": sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / len(lines),
            "fw_short_lines": sum(len(line) <= self.short_line_length for line in lines) / len(lines),
            "fw_dup_chars": duplicated(lines)[1] / max(len(text), 1),
            "fw_newlines": text.count("\n") / words,
        }

    def score_segments(self, segments: Segments) -> dict[str, np.ndarray]:
        seg = segments
        lines = seg.lines
        shown = np.maximum(lines, 1)
        punct = np.isin(_last_chars(seg, seg.line_end), _TERMINAL_CODES)
        short = seg.line_chars <= self.short_line_length
        columns = {
            "fw_line_punct": seg.per_doc(seg.line_doc[punct]) / shown,
            "fw_short_lines": seg.per_doc(seg.line_doc[short]) / shown,
            "fw_dup_chars": seg.duplicated(seg.line_doc, seg.line_hashes, seg.line_chars)[1]
            / np.maximum(seg.text_chars, 1),
            "fw_newlines": seg.count_bytes(ord("\n")) / np.maximum(seg.per_doc(seg.token_doc), 1),
        }
        empty = lines == 0
        for name, value in (("fw_line_punct", 0.0), ("fw_short_lines", 1.0), ("fw_dup_chars", 0.0),
                            ("fw_newlines", 0.0)):
            columns[name][empty] = value
        return columns

    def keep(self, scores: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        return first_failure(scores, [
            ("fineweb:line_punct", lambda s: s.fw_line_punct < self.line_punct_thr),
            ("fineweb:short_lines", lambda s: s.fw_short_lines > self.short_line_thr),
            ("fineweb:dup_line_chars", lambda s: s.fw_dup_chars > self.char_duplicates_ratio),
            ("fineweb:newlines", lambda s: s.fw_newlines > self.new_line_ratio),
        ])
