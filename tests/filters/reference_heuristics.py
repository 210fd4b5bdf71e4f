"""The heuristics as they were before they were measured over a batch's bytes (filters/segments.py):
Python strings per document, token and line. Kept verbatim (the n-gram hashing of filters/ngrams.py
inlined) as the oracle the batch implementation must equal, score for score.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np
import pandas as pd

from filters.base import TEXT, RowFilter, Rule, first_failure

_WORD = re.compile(r"\w+", re.UNICODE)
_ALPHA = re.compile(r"[^\W\d_]", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?]+(?:[\"')\]]*)(?=\s|$)")
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)

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


STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_DOC_MULTIPLIER = np.uint64(0xC2B2AE3D27D4EB4F)  # odd: spreads document numbers over the key space
BULLETS = ("•", "●", "‣", "–", "-", "*", "·")
ELLIPSES = ("...", "…")
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’", "…", "。", "！", "？", "»", ")", ":", ";")
C4_END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                     "use of cookies", "use cookies")


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


def repeated_ngram_chars(documents: Sequence[Sequence[str]], top_sizes: Sequence[int],
                         dup_sizes: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per n, two arrays over ``documents`` (token lists): characters of the most frequent n-gram
    times its count, if it repeats (ties: the earliest n-gram); characters of words covered by
    repeats of an earlier n-gram, each word counted once.

    Vectorised over the uint64 n-gram hashes of all documents at once (per-document numpy calls
    cost more than the work); a character count includes one separating space per word.
    """
    counts = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
    tokens = [t for doc in documents for t in doc]
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens)) + 1
    cumulative = np.concatenate([[0], np.cumsum(lengths)])
    owner = np.repeat(np.arange(len(documents)), counts)  # document of each word
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    sizes = sorted(set(top_sizes) | set(dup_sizes))
    for n, grams in ngram_hashes_by_size(word_hashes(tokens), [s for s in sizes if s <= len(tokens)]):
        start = np.flatnonzero(owner[:len(grams)] == owner[n - 1:])  # n-grams inside one document
        # one uint64 key per (document, n-gram): an unstable single-key sort is ~15x a lexsort
        key = grams[start] ^ (owner[start].astype(np.uint64) * _DOC_MULTIPLIER)
        order = np.argsort(key)
        key, start = key[order], start[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        group_start = np.flatnonzero(first)
        group_count = np.diff(np.append(group_start, len(key)))
        earliest = np.minimum.reduceat(start, group_start) if len(key) else start
        repeated = group_count > 1  # only these can be a document's top n-gram
        doc, count, at = owner[earliest[repeated]], group_count[repeated], earliest[repeated]
        best = np.lexsort((at, -count, doc))  # per document: most frequent, then earliest
        lead = best[np.r_[True, doc[best][1:] != doc[best][:-1]]] if len(best) else best
        top = np.zeros(len(documents), dtype=np.int64)
        top[doc[lead]] = (cumulative[at[lead] + n] - cumulative[at[lead]] - 1) * count[lead]
        repeats = start[start != np.repeat(earliest, group_count)]
        cover = np.zeros(len(tokens) + 1, dtype=np.int64)
        np.add.at(cover, repeats, 1)
        np.add.at(cover, repeats + n, -1)
        covered = np.cumsum(cover)[:-1] > 0
        dup = np.bincount(owner[covered], weights=lengths[covered], minlength=len(documents)).astype(np.int64)
        out[n] = (top, dup)
    return out


class GopherQuality(RowFilter):
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


class GopherRepetition(RowFilter):
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

    def score(self, batch: pd.DataFrame) -> pd.DataFrame:
        texts = batch[TEXT].tolist()
        size = np.fromiter((max(len(t), 1) for t in texts), dtype=np.float64, count=len(texts))
        scores = pd.DataFrame([self._line_scores(t) for t in texts], index=batch.index, dtype="float64",
                              columns=["rep_dup_para_frac", "rep_dup_para_char_frac", "rep_dup_line_frac",
                                       "rep_dup_line_char_frac"])
        repeated = repeated_ngram_chars([_WORD.findall(t.lower()) for t in texts], list(self.top_n_grams),
                                        list(self.dup_n_grams))
        zeros = np.zeros(len(texts), dtype=np.int64)
        for n in sorted(self.top_n_grams):
            scores[f"rep_top_{n}gram"] = repeated.get(n, (zeros, zeros))[0] / size
        for n in sorted(self.dup_n_grams):
            scores[f"rep_dup_{n}gram"] = repeated.get(n, (zeros, zeros))[1] / size
        return scores

    def score_text(self, text: str) -> dict[str, float]:
        return self.score(pd.DataFrame({TEXT: [text]})).iloc[0].to_dict()

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


class C4Lines(RowFilter):
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

    def keep(self, scores: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        return first_failure(scores, [
            ("c4:lorem_ipsum", lambda s: (s.c4_lorem_ipsum > 0) & self.filter_lorem_ipsum),
            ("c4:curly_bracket", lambda s: (s.c4_curly_bracket > 0) & self.filter_curly_bracket),
            ("c4:too_few_sentences", lambda s: s.c4_sentences < self.min_num_sentences),
        ])


class FineWebQuality(RowFilter):
    """FineWeb ratios: lines ending in punctuation, short lines, duplicated line characters, newlines per word."""

    name: ClassVar[str] = "fineweb"
    stage: ClassVar[str] = "heuristics"
    reasons: ClassVar[tuple[str, ...]] = ("fineweb:line_punct", "fineweb:short_lines", "fineweb:dup_line_chars",
                                          "fineweb:newlines")
    score_fields: ClassVar[tuple[str, ...]] = ("short_line_length",)

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

    def keep(self, scores: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        return first_failure(scores, [
            ("fineweb:line_punct", lambda s: s.fw_line_punct < self.line_punct_thr),
            ("fineweb:short_lines", lambda s: s.fw_short_lines > self.short_line_thr),
            ("fineweb:dup_line_chars", lambda s: s.fw_dup_chars > self.char_duplicates_ratio),
            ("fineweb:newlines", lambda s: s.fw_newlines > self.new_line_ratio),
        ])
