"""MinHash signatures, LSH parameters, the keep order and components: the pure, in-memory half of dedup."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from datasketch.lsh import _optimal_param
from rensa import RMinHash

from filters.minhash import (
    MAX_HASH,
    MAX_NGRAM,
    band_hashes,
    bucket_stars,
    collision_probability,
    connected_components,
    dedup_form,
    dedup_hashes,
    estimated_jaccard,
    exact_hashes,
    jaccard,
    keep_best,
    large_star,
    lsh_buckets,
    lsh_params,
    minhash_signatures,
    pair_jaccard,
    partition_shingles,
    resolve_clusters,
    set_offsets,
    shingle_hashes,
    signatures_from_flat,
    small_star,
    word_hash,
)
from tests.conftest import SENTENCES


def text_jaccard(a: str, b: str) -> float:
    sa, sb = set(shingle_hashes(a).tolist()), set(shingle_hashes(b).tolist())
    return len(sa & sb) / len(sa | sb)


def test_dedup_form_ignores_case_punctuation_and_spacing():
    assert dedup_form("  Hello,   WORLD!\n\tIt's  me. ") == "hello world it s me"
    assert dedup_form(None) == "" and dedup_form("") == ""


def test_shingles_are_word_5grams_of_the_dedup_form():
    text = "one two three four five six seven"
    assert len(shingle_hashes(text)) == 3
    assert np.array_equal(shingle_hashes(text), shingle_hashes("One, two; THREE four five six seven!"))
    # an n-gram hashes the same wherever it occurs, and word order matters
    assert shingle_hashes("x one two three four five")[1] == shingle_hashes(text)[0]
    assert shingle_hashes("two one three four five")[0] != shingle_hashes(text)[0]
    assert len(shingle_hashes("only three words")) == 1 and len(shingle_hashes("")) == 0


def test_words_are_the_dedup_form_words_in_any_script():
    text = "Straße, ÉCOLE naïve: 東京 x_y ½ Ελληνικά — done!! 42nd\tstreet  "
    reference = shingle_hashes(dedup_form(text), ngram=1)
    assert np.array_equal(shingle_hashes(text, ngram=1), reference) and len(reference) == 10
    # lone surrogates (from JSON "\ud800" escapes) are not words, and do not stop the partition
    assert len(shingle_hashes("caf\ud800 au lait", ngram=1)) == 3


def test_exact_duplicates_are_dedup_form_duplicates_for_every_character():
    # the byte-level split against Python's regex, one text per code point of the Basic Multilingual
    # Plane (all 1.1M code points behave alike, but take 7 s): they disagree only on two capitals
    # that Python lowercases by context or into two characters (U+0130 "İ", U+03A3 "Σ" at the end
    # of a word) and on letters newer than Python's Unicode tables
    points = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    texts = [f"x{chr(c)}y {chr(c)}{chr(c)}" for c in points]
    differ = exact_hashes(texts) != exact_hashes([dedup_form(t) for t in texts])
    odd = [points[i] for i in np.flatnonzero(differ)]
    assert all(c in (0x130, 0x3A3) or unicodedata.category(chr(c)) == "Cn" for c in odd), odd[:10]
    assert {0x130, 0x3A3} <= set(odd) and len(odd) < len(points) // 100


def test_a_partition_of_mixed_scripts_shingles_each_text_as_alone():
    # ASCII bytes are classified by arithmetic, the others by their Unicode class: same words, same order
    texts = ["Hello, World_1 it's 42!", None, "Straße naïve, hello world_1 it s 42", "", "  ,, ",
             "one two three four five six", "café au lait — one two three four five six", "x"]
    flat, sizes = partition_shingles(texts, ngram=5)
    assert np.array_equal(flat, np.concatenate([shingle_hashes(t) for t in texts]))
    assert sizes.tolist() == [len(shingle_hashes(t)) for t in texts] == [1, 0, 3, 0, 0, 2, 5, 1]
    words = partition_shingles(texts[:3], ngram=1)[0]
    assert words[:5].tolist() == words[-5:].tolist()  # the ASCII words again, after two non-ASCII ones


def _rensa(hash_sets: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """rensa's R-MinHash of each set of token hashes, one document at a time: the reference."""
    rows = RMinHash.digest_matrix_from_token_hash_sets([h.astype(np.uint64).tolist() for h in hash_sets],
                                                       num_perm, seed).to_rows()
    return np.array(rows, dtype=np.uint32).reshape(len(hash_sets), num_perm)


def test_signatures_are_rensa_rminhash_of_each_texts_own_shingles():
    texts = [" ".join(SENTENCES), SENTENCES[0], "tiny", "", None, " ".join(SENTENCES[::-1]) * 50]
    sig = minhash_signatures(texts, num_perm=64, seed=7)
    assert sig.shape == (len(texts), 64) and sig.dtype == np.uint32
    assert np.array_equal(sig, _rensa([shingle_hashes(t) for t in texts], 64, 7))
    assert (sig[3] == MAX_HASH).all() and (sig[4] == MAX_HASH).all()
    assert not np.array_equal(sig, minhash_signatures(texts, num_perm=64, seed=8))


def test_unigram_signatures_hash_each_word_itself():
    def token_hash(token: str) -> int:  # word_hash of one word, folded to 32 bits as a 1-gram
        h = int(word_hash([token])[0]) * 0x9E3779B97F4A7C15 % 2**64
        return (h ^ (h >> 32)) & 0xFFFFFFFF

    texts = [" ".join(SENTENCES), "Straße naïve 東京 x_y", "one",
             "internationalization 12345678901234567890123 ünïcödé_wörds_crossing_chunks abcdefgh abcdefghi"]
    sig = minhash_signatures(texts, num_perm=32, ngram=1, seed=3)
    words = [np.array([token_hash(w) for w in dedup_form(t).split()], dtype=np.uint64) for t in texts]
    assert np.array_equal(sig, _rensa(words, 32, 3))


def test_word_hash_is_the_same_in_every_process():
    words = ["minhash", "straße", "東京", ""]
    code = f"from filters.minhash import word_hash; print(word_hash({words!r}).tolist())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(word_hash(words).tolist())
    assert word_hash(words).dtype == np.uint64 and len(set(word_hash(words).tolist())) == 4


def test_word_hash_tells_apart_words_of_every_length():
    # 8 bytes are read at a time: lengths around the chunk edges, multi-byte characters across them,
    # and every single-byte change of a long word
    words = ["", "a", "ab", "abcdefg", "abcdefgh", "abcdefghi", "abcdefghijklmnop", "abcdefghijklmnopq",
             "aaaaaaaaa", "aaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaaa", "ééééé", "éééééé",
             "東京東京東", "東京東京東京"]
    long = "supercalifragilisticexpialidocious"
    words += [long[:i] + "x" + long[i + 1:] for i in range(len(long))] + [long]
    hashes = word_hash(words)
    assert len(set(hashes.tolist())) == len(set(words))
    assert word_hash(["abcdefghi", "abcdefghi"]).tolist() == [hashes[5]] * 2


def test_texts_never_share_a_word_across_their_boundary():
    texts = ["one two", "three", "four five six", "seven"]
    flat, sizes = partition_shingles(texts, ngram=2)
    assert sizes.tolist() == [1, 1, 2, 1]
    assert np.array_equal(flat, np.concatenate([shingle_hashes(t, ngram=2) for t in texts]))
    assert partition_shingles(["abc", "def"], ngram=1)[0].tolist() == \
        partition_shingles(["abc def"], ngram=1)[0].tolist()


def test_a_partition_split_in_chunks_hashes_each_text_as_alone():
    # a partition is split a few MB of text at a time: texts around and across the chunk edges
    rng = np.random.default_rng(2)
    vocabulary = np.array(SENTENCES[0].split() + ["Straße", "東京", "x_y", "supercalifragilistic"])
    block = " ".join(rng.choice(vocabulary, 5000).tolist()) + " "  # ~35 KB
    texts = [block * copies + f"end {copies}" for copies in (100, 0, 1, 60, 130, 0)] + ["", "tiny"]
    assert sum(len(t.encode()) for t in texts) > 2 * (4 << 20)
    exact, flat, sizes = dedup_hashes(texts)
    assert np.array_equal(flat, np.concatenate([shingle_hashes(t) for t in texts]))
    assert sizes.tolist() == [len(shingle_hashes(t)) for t in texts]
    assert exact.tolist() == [exact_hashes([t])[0] for t in texts]


def test_no_texts_and_texts_without_words():
    flat, sizes = partition_shingles([], ngram=5)
    assert len(flat) == 0 and len(sizes) == 0 and len(exact_hashes([])) == 0
    exact, flat, sizes = dedup_hashes(["", None, " ,, !"])
    assert sizes.tolist() == [0, 0, 0] and len(flat) == 0 and len(set(exact.tolist())) == 1
    with pytest.raises(ValueError, match="ngram"):
        dedup_hashes(["a"], ngram=MAX_NGRAM + 1)


def test_exact_hashes_are_equal_exactly_when_the_dedup_form_is():
    texts = ["The cat sat on the mat.", "the CAT sat, on the mat", "  the cat   sat on\tthe mat!! ",
             "the mat sat on the cat", "the cat sat on the", "the cat sat on the mat mat",
             "x y y x", "y x x y", "a a", "a", "a a a a", "", None, " ... ", "café au lait", "CAFÉ, au lait.",
             "Straße 東京 x_y", "straße 東京 x y", "supercalifragilisticexpialidocious word",
             "supercalifragilisticexpialidociuos word"]
    hashes = exact_hashes(texts)
    assert hashes.dtype == np.uint64
    for i, a in enumerate(texts):
        for j, b in enumerate(texts):
            assert (hashes[i] == hashes[j]) == (dedup_form(a) == dedup_form(b)), (a, b)


def test_dedup_hashes_is_exact_hashes_and_shingles_from_one_split():
    texts = [" ".join(SENTENCES), SENTENCES[0].upper(), None, "tiny", "", "Straße naïve 東京 x_y"]
    exact, flat, sizes = dedup_hashes(texts, ngram=3)
    assert np.array_equal(exact, exact_hashes(texts))
    reference = partition_shingles(texts, ngram=3)
    assert np.array_equal(flat, reference[0]) and np.array_equal(sizes, reference[1])


def test_signatures_of_a_partition_are_each_documents_own_minimum():
    # large, tiny and empty documents side by side, more shingles than one rensa call takes
    rng = np.random.default_rng(5)
    sizes = np.array([1, 0, 700_000, 3, 0, 600_000, 2, 0, 300_000, 5])
    flat = rng.integers(0, 2**32, int(sizes.sum()), dtype=np.uint64).astype(np.uint32)
    sig = signatures_from_flat(flat, sizes, num_perm=16, seed=11)
    assert (sig[sizes == 0] == MAX_HASH).all() and sizes.sum() > 1 << 20
    assert np.array_equal(sig, _rensa(np.split(flat, np.cumsum(sizes)[:-1]), 16, 11))
    assert signatures_from_flat(flat[:0], sizes[:0], num_perm=16).shape == (0, 16)


def test_the_signature_estimate_of_jaccard_is_unbiased():
    # 400 pairs of random shingle sets at known Jaccard: the share of equal slots is unbiased, with
    # the spread of num_perm independent draws (sqrt(J(1 - J) / num_perm))
    rng = np.random.default_rng(9)
    num_perm, errors = 128, []
    for _ in range(400):
        common, only = int(rng.integers(20, 400)), int(rng.integers(0, 200))
        values = rng.choice(2**32, common + 2 * only, replace=False).astype(np.uint32)
        a, b = values[:common + only], np.concatenate([values[:common], values[common + only:]])
        sig = signatures_from_flat(np.concatenate([a, b]), np.array([len(a), len(b)]), num_perm, seed=1)
        truth = common / (common + 2 * only)
        errors.append((estimated_jaccard(sig[0], sig[1]) - truth) / np.sqrt(max(truth * (1 - truth), 1e-9) / num_perm)
                      if 0 < truth < 1 else estimated_jaccard(sig[0], sig[1]) - truth)
    errors = np.array(errors)
    assert abs(errors.mean()) < 0.15 and 0.7 < errors.std() < 1.3


def test_estimated_jaccard_tracks_true_text_jaccard():
    base = " ".join(SENTENCES)
    words = base.split()
    for edits in (1, 3, 8):
        copy = " ".join("EDITED" if i % (len(words) // edits) == 7 else w for i, w in enumerate(words))
        sig = minhash_signatures([base, copy], num_perm=256)
        assert abs(estimated_jaccard(sig[0], sig[1]) - text_jaccard(base, copy)) < 0.1


def test_lsh_params_minimise_the_same_error_as_datasketch():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        assert lsh_params(threshold, 128) == _optimal_param(threshold, 128, 0.5, 0.5)
    bands, rows = lsh_params(0.8, 128)
    print(f"threshold 0.8, 128 perms: {bands} bands x {rows} rows")
    assert bands * rows <= 128


def test_lsh_s_curve_rises_at_the_threshold():
    bands, rows = lsh_params(0.8, 128, false_positive_weight=0.1, false_negative_weight=0.9)
    p = collision_probability(np.array([0.3, 0.5, 0.8, 0.85, 0.95]), bands, rows)
    assert p[0] < 0.01 and p[1] < 0.1, p
    assert p[3] >= 0.95 and p[4] > 0.999, p
    assert np.all(np.diff(p) > 0)


def test_band_hashes_collide_exactly_when_a_band_is_equal():
    sig = np.arange(24, dtype=np.uint32).reshape(2, 12).copy()
    sig[1, :4] = sig[0, :4]
    h = band_hashes(sig, bands=3, rows=4)
    assert h.shape == (2, 3) and h[0, 0] == h[1, 0] and h[0, 1] != h[1, 1] and h[0, 2] != h[1, 2]
    with pytest.raises(ValueError, match="num_perm"):
        band_hashes(sig, bands=4, rows=4)


def test_lsh_buckets_name_band_and_hash_together():
    """Equal band -> equal bucket; the same band hash in another band is another bucket."""
    hashes = np.array([[7, 7, 9], [7, 8, 9]], dtype=np.uint64)
    b = lsh_buckets(hashes)
    assert b.dtype == np.uint64 and b.shape == (2, 3)
    assert b[0, 0] == b[1, 0] and b[0, 2] == b[1, 2] and b[0, 1] != b[1, 1]
    assert b[0, 0] != b[0, 1]  # hash 7 in band 0 and in band 1
    assert len(set(b.ravel().tolist())) == 4


# --- dedup in memory: keep order and components ------------------------------------------------

def test_keep_rule_is_score_then_length_then_id():
    members = pd.DataFrame({"doc": ["c", "b", "a", "d", "e", "f", "g"],
                            "group": [1, 1, 1, 2, 2, 3, 3],
                            "score": [0.9, 0.2, np.nan, 0.5, 0.5, 0.1, 0.1],
                            "length": [10, 99, 99, 10, 20, 30, 30]})
    assert keep_best(members, "group").tolist() == [True, False, False, False, True, True, False]


def test_connected_components_follow_chains_to_the_smallest_id():
    edges = pd.DataFrame({"src": [9, 8, 7, 6, 5, 21], "dst": [8, 7, 6, 5, 4, 20]})
    got = connected_components(edges).set_index("node")["label"].sort_index()
    assert got.to_dict() == {4: 4, 5: 4, 6: 4, 7: 4, 8: 4, 9: 4, 20: 20, 21: 20}
    strings = connected_components(pd.DataFrame({"src": ["b", "c", "z"], "dst": ["c", "a", "y"]}))
    assert dict(zip(strings["node"], strings["label"], strict=True)) == {"b": "a", "c": "a", "a": "a",
                                                                         "z": "y", "y": "y"}


@pytest.mark.parametrize("seed", range(5))
def test_components_label_as_scipy_does(seed: int) -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_components

    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    edges = pd.DataFrame({"src": [f"d{i}" for i in rng.integers(0, n, n)],
                          "dst": [f"d{i}" for i in rng.integers(0, n, n)]})
    codes, nodes = pd.factorize(pd.concat([edges["src"], edges["dst"]], ignore_index=True))
    graph = coo_matrix((np.ones(len(edges)), (codes[:len(edges)], codes[len(edges):])), shape=(len(nodes),) * 2)
    reference = pd.DataFrame({"node": nodes, "component": scipy_components(graph, directed=False)[1]})
    reference = reference.assign(label=reference.groupby("component")["node"].transform("min"))[["node", "label"]]
    pd.testing.assert_frame_equal(connected_components(edges).sort_values("node", ignore_index=True),
                                  reference.sort_values("node", ignore_index=True))
    chain = pd.DataFrame({"src": [f"c{i:03d}" for i in range(1, 200)], "dst": [f"c{i - 1:03d}" for i in range(1, 200)]})
    assert set(connected_components(chain)["label"]) == {"c000"}


# --- the kernels of dedup's reducers -------------------------------------------------------------

def shingle_sets(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return [np.unique(rng.integers(0, 60, rng.integers(0, 40))).astype(np.uint32) for _ in range(n)]


def as_lists(sets: list[np.ndarray]) -> pa.ListArray:
    return pa.array([s.tolist() for s in sets], pa.list_(pa.uint32()))


def test_pair_jaccard_is_the_exact_jaccard_of_every_pair_at_once() -> None:
    rng = np.random.default_rng(1)
    a, b = shingle_sets(rng, 300), shingle_sets(rng, 300)
    a[0], b[0] = np.empty(0, np.uint32), np.empty(0, np.uint32)  # both empty: 0
    b[1] = a[1].copy()  # equal: 1
    # sliced Arrow lists (offsets not from 0), as a reducer reads them
    got = pair_jaccard(set_offsets(as_lists(a).slice(0, 300)), set_offsets(pa.chunked_array([as_lists(b)])))
    assert np.allclose(got, [jaccard(x, y) for x, y in zip(a, b, strict=True)])
    assert got[0] == 0.0 and got[1] == 1.0
    assert np.allclose(pair_jaccard(set_offsets(as_lists(a).slice(5, 7)), set_offsets(as_lists(b).slice(9, 7))),
                       [jaccard(x, y) for x, y in zip(a[5:12], b[9:16], strict=True)])


def test_bucket_stars_link_every_member_to_the_smallest_id_of_its_bucket() -> None:
    bucket = np.array([5, 5, 5, 7, 7, 9, 5, 7], dtype=np.uint64)
    key = np.array([10, 11, 12, 13, 14, 15, 10, 11])
    doc = np.array(["c", "a", "b", "z", "y", "q", "c", "a"], dtype=object)
    src, dst = bucket_stars(bucket, key, doc)
    # bucket 5: a (11) is the centre; bucket 7: a (11) again; bucket 9 is alone; key 10 twice: one edge
    assert sorted(zip(src.tolist(), dst.tolist(), strict=True)) == [(10, 11), (12, 11), (13, 11), (14, 11)]


def star_components(a: np.ndarray, b: np.ndarray) -> tuple[dict[int, int], int]:
    """Large-star / small-star in one process until a round changes nothing: node -> label, rounds."""
    rounds = 0
    while True:
        rounds += 1
        larger, smaller, large_changes = large_star(np.concatenate([a, b]), np.concatenate([b, a]))
        a, b, small_changes = small_star(larger, smaller)
        if large_changes == small_changes == 0:
            labels = dict(zip(a.tolist(), b.tolist(), strict=True))
            labels.update({int(v): int(v) for v in b})
            return labels, rounds


@pytest.mark.parametrize("seed", range(6))
def test_star_steps_reach_the_components_of_the_in_process_kernel(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    src, dst = rng.integers(0, n, n // 2), rng.integers(0, n, n // 2)
    labels, _ = star_components(src.astype(np.int64), dst.astype(np.int64))
    reference = connected_components(pd.DataFrame({"src": src, "dst": dst}))
    for node, label in zip(reference["node"], reference["label"], strict=True):
        assert labels.get(node, node) == label  # a node only in self-loops is its own component


def test_star_steps_take_logarithmic_rounds_on_a_long_chain() -> None:
    n = 5000
    for order in (np.arange(n), np.random.default_rng(0).permutation(n)):
        labels, rounds = star_components(order[1:].astype(np.int64), order[:-1].astype(np.int64))
        assert set(labels.values()) == {0} and len(labels) == n
        assert rounds <= 2 * int(np.log2(n)), rounds


def test_resolve_clusters_keeps_the_best_and_removes_only_what_resembles_a_kept_member() -> None:
    base = np.arange(100, dtype=np.uint32)
    b = np.arange(10, 110, dtype=np.uint32)   # J(base, b) = 90/110
    c = np.arange(20, 120, dtype=np.uint32)   # J(b, c) = 90/110, J(base, c) = 80/120
    other = np.arange(500, 600, dtype=np.uint32)
    sets = [base, b, c, other, other.copy()]
    values = np.concatenate(sets)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    cluster = np.array([1, 1, 1, 2, 2])
    doc = np.array(["a", "b", "c", "x", "y"], dtype=object)
    score = np.array([0.9, 0.5, 0.1, np.nan, np.nan])
    length = np.array([10, 10, 10, 5, 7])
    near = resolve_clusters(cluster, doc, score, length, (values, offsets), 0.8)
    # a kept (best); b resembles a: removed; c resembles only b, which is removed: kept (no chaining);
    # x and y tie on score: the longer (y) is kept
    assert near.tolist() == [False, True, False, True, False]
    assert resolve_clusters(cluster, doc, score, length, (values, offsets), 0.0).tolist() == \
        [False, True, True, True, False]
