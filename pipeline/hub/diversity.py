"""Diversity of generated text: the numbers that reveal a prompt collapsing onto one shape.

Cosmopedia's lesson: 59% of TinyStories open with "Once upon a time". These metrics make that
visible in a dataset card. All functions are pure: a list of texts in, numbers out.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation is dropped so it cannot inflate distinct-n."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokenized: Sequence[Sequence[str]], n: int) -> float:
    """Unique n-grams over all n-grams in the corpus (Li et al. 2016); 0.0 for an empty corpus."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for tokens in tokenized:
        grams = ngrams(tokens, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def openings(tokenized: Sequence[Sequence[str]], n: int = 3) -> Counter[str]:
    """How often each opening n-gram (the first ``n`` words) starts a text."""
    return Counter(" ".join(tokens[:n]) for tokens in tokenized if len(tokens) >= n)


def top_opening(tokenized: Sequence[Sequence[str]], n: int = 3) -> tuple[str | None, float]:
    """The most common opening n-gram and the share of texts (of those with >= n words) that use it."""
    counts = openings(tokenized, n)
    if not counts:
        return None, 0.0
    phrase, count = counts.most_common(1)[0]
    return phrase, count / sum(counts.values())


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
    doc_freq: list[Counter[tuple[str, ...]]] = []
    for n in range(1, max_n + 1):
        df: Counter[tuple[str, ...]] = Counter()
        for tokens in tokenized:
            df.update(set(ngrams(tokens, n)))
        doc_freq.append(df)
    scores = []
    for tokens in tokenized:
        log_sum, used = 0.0, 0
        for n in range(1, max_n + 1):
            grams = set(ngrams(tokens, n))
            if not grams:
                continue
            shared = sum(1 for g in grams if doc_freq[n - 1][g] >= 2)
            # smoothing as in BLEU's method 1, so one unmatched order does not zero the score
            log_sum += math.log(max(shared, 0.1) / len(grams))
            used += 1
        if used:
            scores.append(math.exp(log_sum / used))
    return sum(scores) / len(scores) if scores else 0.0


def diversity_report(texts: Sequence[str], self_bleu_sample: int = 2000,
                     seed: int = 0) -> dict[str, float | str | None]:
    """distinct-1/2/3, the most common opening 3-gram and its share, compression ratio, self-BLEU-lite.

    Self-BLEU-lite holds every n-gram of its texts in memory, so it runs on a seeded sample.
    """
    tokenized = [words(t) for t in texts]
    phrase, share = top_opening(tokenized, 3)
    sample = tokenized
    if len(tokenized) > self_bleu_sample:
        sample = random.Random(seed).sample(tokenized, self_bleu_sample)
    return {
        "documents": len(texts),
        "distinct_1": distinct_n(tokenized, 1),
        "distinct_2": distinct_n(tokenized, 2),
        "distinct_3": distinct_n(tokenized, 3),
        "top_opening": phrase,
        "top_opening_share": share,
        "compression_ratio": compression_ratio(texts),
        "self_bleu_lite": self_bleu_lite(sample),
    }
