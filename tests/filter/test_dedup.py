"""Exact and MinHash near-dedup on Dask: what is found, what is kept, and that nothing depends on layout."""

from __future__ import annotations

import random

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from filters.minhash import exact_hashes, shingle_hashes
from pipeline.cluster import dask_client
from pipeline.errors import FilterError
from pipeline.filter.dedup import exact_dedup, minhash_dedup

SUBJECTS = ["the student", "a teacher", "the river", "our class", "the engine", "a farmer", "the planet",
            "my neighbour", "the library", "a young cat", "the committee", "the old bridge"]
VERBS = ["explains", "crosses", "measures", "describes", "repairs", "visits", "compares", "draws",
         "protects", "studies", "counts", "follows"]
OBJECTS = ["the water cycle", "a broken clock", "three ripe apples", "the northern hills", "an ancient map",
           "the spring festival", "a difficult equation", "the quiet harbour", "seven blue boxes",
           "the morning train", "a long letter", "the school garden"]
ENDINGS = ["before lunch.", "with great care.", "during the storm.", "after the lesson.", "for the first time.",
           "in the evening.", "without any help.", "near the station.", "every Tuesday.", "at dawn."]


def document(rng: random.Random, sentences: int = 40) -> str:
    """A realistic-looking paragraph whose word 5-grams barely overlap with any other one."""
    return " ".join(f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
                    f"{rng.choice(ENDINGS)}" for _ in range(sentences))


def edit(rng: random.Random, text: str, words: int) -> str:
    tokens = text.split()
    for i in rng.sample(range(len(tokens)), words):
        tokens[i] = rng.choice(["quickly", "indeed", "also", "perhaps"])
    return " ".join(tokens)


def jaccard(a: str, b: str) -> float:
    sa, sb = set(shingle_hashes(a).tolist()), set(shingle_hashes(b).tolist())
    return len(sa & sb) / max(1, len(sa | sb))


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    """40 distinct documents; 10 of them get two near-copies (1-2 word edits), ids shuffled."""
    rng = random.Random(4)
    rows = []
    for i in range(40):
        text = document(rng)
        rows.append({"text": text, "origin": i})
        if i < 10:
            rows += [{"text": edit(rng, text, 1 + c), "origin": i} for c in range(2)]
    rng.shuffle(rows)
    frame = pd.DataFrame(rows)
    frame.insert(0, "id", [f"doc-{i:03d}" for i in range(len(frame))])
    frame["edu_score"] = np.round(np.linspace(0, 1, len(frame)), 3)
    return frame


@pytest.mark.slow
def test_fixture_near_copies_are_similar_and_distinct_documents_are_not(corpus):
    texts, origin = corpus["text"].tolist(), corpus["origin"].tolist()
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            sim = jaccard(texts[i], texts[j])
            assert sim >= 0.85 if origin[i] == origin[j] else sim < 0.3, (i, j, sim)


def test_planted_near_duplicates_are_clustered_and_the_best_copy_kept(corpus):
    stats: dict = {}
    out = minhash_dedup(dd.from_pandas(corpus, npartitions=4), stats=stats).compute()
    for _, group in out.groupby("origin"):
        assert group["cluster_id"].nunique() == 1
        assert (group["cluster_id"] == group["id"].min()).all()
        assert (group["cluster_size"] == len(group)).all()
        kept = group[~group["near_dup"]]
        assert len(kept) == 1 and kept["edu_score"].iloc[0] == group["edu_score"].max()
    assert out["near_dup"].sum() == 20
    assert stats["bands"] * stats["rows"] <= 128 and stats["clusters"] == 10 and stats["removed"] == 20


def test_distinct_documents_are_never_merged(corpus):
    rng = random.Random(11)
    distinct = pd.DataFrame({"id": range(60), "text": [document(rng) for _ in range(60)]})
    out = minhash_dedup(dd.from_pandas(distinct, npartitions=3)).compute()
    assert not out["near_dup"].any() and (out["cluster_size"] == 1).all()
    assert out["cluster_id"].tolist() == list(range(60))


def test_candidates_are_verified_on_their_exact_jaccard():
    rng = random.Random(8)
    base = document(rng)
    copy = edit(rng, base, 10)
    similarity = jaccard(base, copy)
    assert 0.75 < similarity < 0.8, similarity
    frame = pd.DataFrame({"id": ["a", "b"], "text": [base, copy], "edu_score": [0.9, 0.1]})
    assert minhash_dedup(frame, threshold=0.7)["near_dup"].tolist() == [False, True]
    # the pair is an LSH candidate either way; only the verification threshold decides
    stats: dict = {}
    strict = minhash_dedup(frame, threshold=0.7, verify_threshold=similarity + 1e-9, stats=stats)
    assert not strict["near_dup"].any() and strict["cluster_size"].tolist() == [1, 1]
    assert stats["candidate_pairs"] == 1 and stats["verified_pairs"] == 0
    at = minhash_dedup(frame, threshold=0.7, verify_threshold=similarity)  # exact: equal passes
    assert at["near_dup"].tolist() == [False, True]
    unverified = minhash_dedup(frame, threshold=0.7, verify=False, verify_threshold=0.99)
    assert unverified["near_dup"].tolist() == [False, True]


def test_a_cluster_above_max_cluster_keeps_its_best_member_only():
    rng = random.Random(19)
    a = document(rng)
    b = edit(rng, a, 4)
    c = edit(rng, b, 4)  # a chain: a ~ b ~ c, but a !~ c
    assert jaccard(a, b) > 0.88 and jaccard(b, c) > 0.88 and jaccard(a, c) < 0.8
    frame = pd.DataFrame({"id": ["a", "b", "c"], "text": [a, b, c], "edu_score": [0.9, 0.5, 0.1]})
    resolved = minhash_dedup(frame)  # best first: c resembles only b, which is removed, so c stays
    assert resolved["near_dup"].tolist() == [False, True, False]
    stats: dict = {}
    capped = minhash_dedup(frame, max_cluster=2, stats=stats)  # 3 members > 2: the best is kept, the rest go
    assert capped["near_dup"].tolist() == [False, True, True]
    assert capped["cluster_size"].tolist() == [3, 3, 3] and capped["cluster_id"].tolist() == ["a", "a", "a"]
    assert stats["giant_clusters"] == 1 and stats["clusters"] == 1 and stats["removed"] == 2


def test_keep_rule_without_a_score_column_prefers_longest_then_smallest_id():
    rng = random.Random(3)
    base = document(rng)
    frame = pd.DataFrame({"id": [5, 3, 9, 1],
                          "text": [base, base + " One more sentence at the end.", edit(rng, base, 1),
                                   base.replace("The", "the", 1)]})
    out = minhash_dedup(frame, threshold=0.7)  # pandas in, pandas out
    assert out["cluster_id"].tolist() == [1, 1, 1, 1]
    assert out.loc[~out["near_dup"], "id"].tolist() == [3]
    exact = exact_dedup(frame.iloc[[0, 2, 3]].assign(text=[base, base.upper(), f" {base}!"]))
    assert len(set(exact_hashes(exact["text"]))) == 1
    assert exact.loc[~exact["exact_dup"], "id"].tolist() == [1]


def test_exact_duplicates_keep_the_highest_score(corpus):
    frame = corpus[["id", "text", "edu_score"]].head(12).copy()
    frame.loc[3, "text"] = frame.loc[1, "text"].upper()
    frame.loc[5, "text"] = frame.loc[1, "text"].lower()
    frame.loc[7, "text"] = "  " + frame.loc[1, "text"].replace(".", " .") + "  "
    frame.loc[[1, 3, 5, 7], "edu_score"] = [0.3, 0.9, 0.9, 0.1]
    out = exact_dedup(dd.from_pandas(frame, npartitions=3)).compute()
    # 3 and 5 tie on score and length: the smaller id wins
    assert out["exact_dup"].tolist() == [i in (1, 5, 7) for i in range(12)]
    hashes = pd.Series(exact_hashes(out["text"]), index=out.index)
    assert hashes[[1, 3, 5, 7]].nunique() == 1 and hashes.nunique() == 9
    assert out.index.tolist() == frame.index.tolist()


def test_empty_none_and_10mb_documents_do_not_crash():
    rng = random.Random(5)
    huge = " ".join(document(rng) for _ in range(4_800))
    assert len(huge) > 10_000_000
    frame = pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "text": ["", None, "", huge, "short"]})
    out = minhash_dedup(exact_dedup(dd.from_pandas(frame, npartitions=2))).compute().set_index("id")
    # empty texts have no shingles: they are exact duplicates, not near-duplicates
    assert out["cluster_size"].tolist() == [1] * 5 and not out["near_dup"].any()
    assert out["exact_dup"].tolist() == [False, True, True, False, False]


def test_missing_column_or_bad_parameter_is_a_clear_error(corpus):
    with pytest.raises(FilterError, match="'body'"):
        minhash_dedup(dd.from_pandas(corpus, npartitions=2), text_column="body")
    with pytest.raises(FilterError, match="'doc_id'"):
        exact_dedup(dd.from_pandas(corpus, npartitions=2), id_column="doc_id")
    with pytest.raises(FilterError, match="filter.minhash.ngram"):
        minhash_dedup(dd.from_pandas(corpus, npartitions=2), ngram=13)


def result(out: pd.DataFrame) -> pd.DataFrame:
    return out.set_index("id").sort_index()[["cluster_id", "cluster_size", "near_dup", "exact_dup"]]


@pytest.mark.slow
def test_results_do_not_depend_on_partitioning_or_workers(corpus):
    frame = pd.concat([corpus, corpus.head(3).assign(id=lambda f: f["id"] + "-copy")], ignore_index=True)

    def run(npartitions: int) -> pd.DataFrame:
        ddf = exact_dedup(dd.from_pandas(frame, npartitions=npartitions))
        return result(minhash_dedup(ddf).compute())

    with dask_client(workers=2) as client:
        two_workers = run(5)
        client.retire_workers([sorted(client.scheduler_info()["workers"])[0]])
        assert len(client.scheduler_info()["workers"]) == 1
        one_worker = run(2)
    pd.testing.assert_frame_equal(one_worker, two_workers)
    assert one_worker["exact_dup"].sum() == 3 and one_worker["near_dup"].sum() == 23
