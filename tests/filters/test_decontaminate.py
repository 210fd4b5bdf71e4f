"""Decontamination: 13-gram candidates, difflib verification, reasons that name the benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from filters.decontaminate import BenchmarkIndex, Decontaminate, ngram_hashes, words
from tests.filters.corpus import documents

QUESTION = ("A baker makes 24 loaves of bread every morning and sells three quarters of them before noon. "
            "How many loaves are left for the afternoon customers if nobody buys any bread at lunch time?")
ANSWER = "She sells 24 * 3 / 4 = 18 loaves, so 24 - 18 = 6 loaves are left. #### 6"
CODE = ("def add_numbers(first, second):\n    \"\"\"Return the sum of the two numbers given as arguments "
        "to this small function.\"\"\"\n    return first + second")
WEB = documents(3, seed=7)


def index(**kw: float) -> BenchmarkIndex:
    return BenchmarkIndex({"gsm8k": [[QUESTION, ANSWER]], "humaneval": [["short prompt", CODE]]}, **kw)


def test_ngram_hashes_are_one_per_window_and_order_sensitive() -> None:
    tokens = words("one two three four five")
    assert len(ngram_hashes(tokens, 3)) == 3 and len(ngram_hashes(tokens, 6)) == 0
    assert ngram_hashes(["a", "b"], 2)[0] != ngram_hashes(["b", "a"], 2)[0]


def test_a_document_quoting_an_item_is_a_verified_hit_despite_formatting() -> None:
    doc = WEB[0] + "\n\nHomework: " + QUESTION.upper().replace(" ", "  ") + "\n\n" + WEB[1]
    hits = index().find(doc)
    assert [(h.benchmark, h.item) for h in hits] == [("gsm8k", 0)] and hits[0].ratio > 0.9


def test_a_shared_13_gram_alone_is_not_contamination() -> None:
    # the same 13 words as the item, inside otherwise unrelated text: a candidate that fails verification
    shared = " ".join(words(QUESTION)[:13])
    doc = WEB[0] + " " + shared + " " + WEB[1]
    assert index().candidates(words(doc)) and index().find(doc) == []
    assert index(min_ratio=0.1).find(doc)  # the verification threshold decides


def test_items_shorter_than_the_ngram_are_counted_as_not_indexed() -> None:
    idx = index()
    assert idx.items == {"gsm8k": 1, "humaneval": 1} and idx.indexed == {"gsm8k": 1, "humaneval": 1}
    assert BenchmarkIndex({"tiny": [["too short to index"]]}).indexed == {"tiny": 0}


def test_filter_scores_and_reasons_name_the_benchmarks() -> None:
    f = Decontaminate.from_index(index())
    batch = pd.DataFrame({"text": [WEB[0], QUESTION + " " + ANSWER, "Solution:\n" + CODE + "\n" + QUESTION]})
    kept, rejected = f.apply(batch)
    assert kept.text.tolist() == [WEB[0]] and kept.decontam_hits.tolist() == [0]
    assert rejected.filter_reason.tolist() == ["decontam:gsm8k", "decontam:gsm8k+humaneval"]
    assert rejected.decontam_matches.tolist() == ["gsm8k:0", "gsm8k:0,humaneval:0"]


def test_index_digest_is_the_same_in_every_process() -> None:
    # the n-gram hashes use the per-process string hash; the digest that outputs record must not
    script = ("from tests.filters.test_decontaminate import index; import sys; "
              "sys.stdout.write(index().digest())")
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=Path(__file__).resolve().parents[2])
    assert other.stdout == index().digest()
    assert index().digest() != BenchmarkIndex({"gsm8k": [[QUESTION]]}).digest()
