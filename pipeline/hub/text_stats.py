"""The card's diversity table: generate's own report plus two corpus-level signals it lacks.

distinct-n, the most common opening and the near-duplicate rate come from
``pipeline.generate.diversity`` (the overall report is already stored in ``generated/manifest.json``);
this module adds the compression ratio and self-BLEU-lite, on the same word tokens. Pure functions:
texts in, numbers out.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pipeline.generate.diversity import diversity_report, words


def compression_ratio(texts: Sequence[str]) -> float:
    """Raw bytes over zlib-compressed bytes of the concatenated corpus: higher means more repetitive.

    Shaib et al. (2024) found this cheap ratio tracks the expensive diversity scores closely.
    """
    blob = "\n".join(texts).encode("utf-8")
    if not blob:
        return 0.0
    return len(blob) / len(zlib.compress(blob, 9))


def self_bleu_lite(tokenized: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Mean over texts of the geometric mean (n = 1..max_n) of the share of a text's n-grams seen in another text.

    A set-based, linear-time stand-in for self-BLEU: an n-gram counts as "seen elsewhere" when its
    document frequency is at least 2. 0 means every text is unique; 1 means each is a copy of others.
    """
    if len(tokenized) < 2:
        return 0.0
    grams = [[_ngrams(tokens, n) for n in range(1, max_n + 1)] for tokens in tokenized]
    doc_freq: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(max_n)]
    for per_n in grams:
        for df, text_grams in zip(doc_freq, per_n, strict=True):
            df.update(text_grams)
    scores = []
    for per_n in grams:
        logs = [math.log(max(sum(1 for g in text_grams if df[g] >= 2), 0.1) / len(text_grams))
                # smoothing as in BLEU's method 1, so one unmatched order does not zero the score
                for df, text_grams in zip(doc_freq, per_n, strict=True) if text_grams]
        if logs:
            scores.append(math.exp(sum(logs) / len(logs)))
    return sum(scores) / len(scores) if scores else 0.0


def card_metrics(texts: Sequence[str], self_bleu_sample: int = 2000, seed: int = 0) -> dict[str, float]:
    """The compression ratio of ``texts`` and self-BLEU-lite on a seeded sample (it holds every n-gram in memory)."""
    tokenized = [words(t) for t in texts]
    if len(tokenized) > self_bleu_sample:
        tokenized = random.Random(seed).sample(tokenized, self_bleu_sample)
    return {"compression_ratio": round(compression_ratio(texts), 4),
            "self_bleu_lite": round(self_bleu_lite(tokenized), 4)}


def full_report(texts: Sequence[str], self_bleu_sample: int = 2000, seed: int = 0) -> dict[str, Any]:
    """generate's report (texts, distinct-1/2/3, top opening and share, near-duplicate rate) plus :func:`card_metrics`."""
    return {**diversity_report(texts), **card_metrics(texts, self_bleu_sample, seed)}


def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}
