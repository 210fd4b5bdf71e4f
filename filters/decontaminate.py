"""Benchmark decontamination: a word n-gram index of benchmark items, then a verification step.

Candidates are documents that share one word ``ngram`` (13 by default, as GPT-3 and the Phi
reports did) with a benchmark item. A shared n-gram alone flags common phrases, so each
candidate is verified as Cosmopedia does: the document region aligned with the item is compared
to the item with difflib's ``SequenceMatcher`` and counts as a hit above ``min_ratio``.

The index is a sorted ``uint64`` array of n-gram hashes with parallel arrays saying which item
segment and position each came from, so lookups are one vectorised ``searchsorted`` per document
and the index of MMLU-sized sets stays in the tens of MB.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xxhash
from pydantic import PrivateAttr

from filters.base import TEXT, Filter
from filters.ngrams import ngram_hashes

_WORD = re.compile(r"\w+", re.UNICODE)
_BITMAP_SIZE = 1 << 24  # 16 MiB of bools: large enough that MMLU-sized sets give few false probes


def words(text: str) -> list[str]:
    """Lower-cased word tokens: punctuation and spacing differences do not hide a match."""
    return _WORD.findall(text.lower()) if isinstance(text, str) else []


def item_text(value: Any) -> str:
    """A benchmark cell as text: lists (answer choices) and dicts (ARC's choices) are flattened."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, Mapping):
        return "\n".join(item_text(v) for v in value.values())
    if isinstance(value, (list, tuple, np.ndarray)):
        return "\n".join(item_text(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Hit:
    benchmark: str
    item: int
    ratio: float


class BenchmarkIndex:
    """N-gram index of benchmark items; ``find(text)`` returns verified hits."""

    def __init__(self, benchmarks: Mapping[str, Iterable[Sequence[str]]], ngram: int = 13,
                 min_ratio: float = 0.5):
        """``benchmarks``: name -> items, each item a sequence of text segments (question, answer, ...)."""
        self.ngram, self.min_ratio = ngram, min_ratio
        self.names = list(benchmarks)
        self.items: dict[str, int] = {}
        self.indexed: dict[str, int] = {}
        self.segments: list[tuple[int, int, list[str]]] = []  # (benchmark index, item, words)
        hashes, seg_ids, positions = [], [], []
        for b, name in enumerate(self.names):
            n_items = n_indexed = 0
            for item, segments in enumerate(benchmarks[name]):
                n_items += 1
                indexed = False
                for segment in segments:
                    tokens = words(segment)
                    h = ngram_hashes(tokens, ngram)
                    if not len(h):
                        continue  # shorter than one n-gram: cannot be matched at this n
                    indexed = True
                    hashes.append(h)
                    seg_ids.append(np.full(len(h), len(self.segments), dtype=np.int32))
                    positions.append(np.arange(len(h), dtype=np.int32))
                    self.segments.append((b, item, tokens))
                n_indexed += indexed
            self.items[name], self.indexed[name] = n_items, n_indexed
        all_hashes = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
        order = np.argsort(all_hashes, kind="stable")
        self.hashes = all_hashes[order]
        self.seg_ids = (np.concatenate(seg_ids) if seg_ids else np.empty(0, np.int32))[order]
        self.positions = (np.concatenate(positions) if positions else np.empty(0, np.int32))[order]
        # A one-hash Bloom filter in front of the binary search: most document n-grams are in no
        # benchmark, and a bitmap probe is far cheaper than a cache-missing search of the index.
        self.bitmap = np.zeros(_BITMAP_SIZE, dtype=bool)
        self.bitmap[self.hashes & np.uint64(_BITMAP_SIZE - 1)] = True

    def __len__(self) -> int:
        return len(self.hashes)

    def digest(self) -> str:
        """A digest of the indexed benchmark words, stable across processes (unlike ``hashes``,
        which use the per-process string hash): what outputs that used this index depend on."""
        state = xxhash.xxh3_64()
        for b, item, tokens in self.segments:
            state.update(f"{self.names[b]}\0{item}\0{' '.join(tokens)}\n".encode("utf-8", "surrogatepass"))
        return state.hexdigest()

    def candidates(self, tokens: Sequence[str]) -> set[tuple[int, int]]:
        """(segment, aligned document start) pairs whose n-grams occur in ``tokens``."""
        h = ngram_hashes(tokens, self.ngram)
        if not len(h) or not len(self.hashes):
            return set()
        maybe = np.flatnonzero(self.bitmap[h & np.uint64(_BITMAP_SIZE - 1)])
        left = np.searchsorted(self.hashes, h[maybe], side="left")
        right = np.searchsorted(self.hashes, h[maybe], side="right")
        found: set[tuple[int, int]] = set()
        for k in np.flatnonzero(right > left):
            for j in range(left[k], right[k]):
                found.add((int(self.seg_ids[j]), int(maybe[k]) - int(self.positions[j])))
        return found

    def find(self, text: str) -> list[Hit]:
        """Verified hits of ``text``: the best ratio per (benchmark, item) at or above ``min_ratio``."""
        tokens = words(text)
        best: dict[tuple[int, int], float] = {}
        for seg, start in self.candidates(tokens):
            b, item, seg_tokens = self.segments[seg]
            region = tokens[max(start, 0):max(start, 0) + len(seg_tokens)]
            ratio = SequenceMatcher(None, seg_tokens, region, autojunk=False).ratio()
            if ratio >= self.min_ratio and ratio > best.get((b, item), 0.0):
                best[(b, item)] = ratio
        return [Hit(self.names[b], item, r) for (b, item), r in sorted(best.items())]


class Decontaminate(Filter):
    """Reject documents that contain a benchmark item; reasons name the benchmark (``decontam:gsm8k``).

    Build it from an index: ``Decontaminate.from_index(BenchmarkIndex({...}))``.
    """

    name: ClassVar[str] = "decontam"
    stage: ClassVar[str] = "decontaminate"
    reasons: ClassVar[tuple[str, ...]] = ("decontam:*",)
    """``decontam:`` and the benchmarks hit, joined by ``+`` (``decontam:gsm8k+mmlu``)."""
    score_fields: ClassVar[tuple[str, ...]] = ("ngram", "min_ratio")

    ngram: int = 13
    min_ratio: float = 0.5
    _index: BenchmarkIndex | None = PrivateAttr(default=None)

    @classmethod
    def from_index(cls, index: BenchmarkIndex) -> Decontaminate:
        f = cls(ngram=index.ngram, min_ratio=index.min_ratio)
        f._index = index
        return f

    def score(self, batch: pd.DataFrame) -> pd.DataFrame:
        if self._index is None:
            raise ValueError("Decontaminate needs an index: use Decontaminate.from_index(BenchmarkIndex(...))")
        hits = [self._index.find(t) for t in batch[TEXT]]
        return pd.DataFrame({
            "decontam_hits": [len(h) for h in hits],
            "decontam_matches": [",".join(f"{x.benchmark}:{x.item}" for x in h) for h in hits],
        }, index=batch.index)

    def keep(self, scores: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        hit = scores["decontam_hits"].fillna(0) > 0
        names = scores["decontam_matches"].fillna("").map(benchmarks_of)
        reason = pd.Series("", index=scores.index, dtype=object)
        reason[hit] = "decontam:" + names[hit]
        return ~hit, reason


def benchmarks_of(matches: str) -> str:
    """``"gsm8k:3,mmlu:9,gsm8k:7"`` -> ``"gsm8k+mmlu"`` (first-seen order)."""
    return "+".join(dict.fromkeys(m.rsplit(":", 1)[0] for m in matches.split(",") if m))
