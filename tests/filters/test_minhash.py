"""MinHash signatures, LSH parameters, the keep order and components: the pure, in-memory half of dedup."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from filters.minhash import (
    MAX_HASH,
    band_hashes,
    collision_probability,
    connected_components,
    dedup_form,
    estimated_jaccard,
    keep_best,
    lsh_buckets,
    lsh_params,
    minhash_signatures,
    partition_shingles,
    shingle_hashes,
    word_hash,
)
from tests.conftest import SENTENCES


def jaccard(a: str, b: str) -> float:
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


def test_a_partition_of_mixed_scripts_shingles_each_text_as_alone():
    # ASCII texts take a byte-level path, the others a Unicode regex: same words, same order
    texts = ["Hello, World_1 it's 42!", None, "Straße naïve, hello world_1 it s 42", "", "  ,, ",
             "one two three four five six", "café au lait — one two three four five six", "x"]
    flat, sizes = partition_shingles(texts, ngram=5)
    assert np.array_equal(flat, np.concatenate([shingle_hashes(t) for t in texts]))
    assert sizes.tolist() == [len(shingle_hashes(t)) for t in texts] == [1, 0, 3, 0, 0, 2, 5, 1]
    words = partition_shingles(texts[:3], ngram=1)[0]
    assert words[:5].tolist() == words[-5:].tolist()  # the ASCII words again, after two non-ASCII ones


def test_signatures_equal_datasketch_minhash_on_the_same_shingles():
    texts = [" ".join(SENTENCES), SENTENCES[0], "tiny", "", None, " ".join(SENTENCES[::-1]) * 50]
    sig = minhash_signatures(texts, num_perm=64, seed=7)
    assert sig.shape == (len(texts), 64) and sig.dtype == np.uint32
    for text, row in zip(texts, sig, strict=True):
        reference = MinHash(num_perm=64, seed=7, hashfunc=int)
        reference.update_batch(shingle_hashes(text).tolist())
        assert np.array_equal(reference.hashvalues, row)
    assert (sig[3] == MAX_HASH).all() and (sig[4] == MAX_HASH).all()


def test_unigram_signatures_equal_datasketch_hashing_each_word_itself():
    def token_hash(token: bytes) -> int:  # word_hash of one word, folded to 32 bits as a 1-gram
        h = int(word_hash([token.decode()])[0]) * 0x9E3779B97F4A7C15 % 2**64
        return (h ^ (h >> 32)) & 0xFFFFFFFF

    texts = [" ".join(SENTENCES), "Straße naïve 東京 x_y", "one"]
    sig = minhash_signatures(texts, num_perm=32, ngram=1, seed=3)
    for text, row in zip(texts, sig, strict=True):
        reference = MinHash(num_perm=32, seed=3, hashfunc=token_hash)
        reference.update_batch([w.encode() for w in dedup_form(text).split()])
        assert np.array_equal(reference.hashvalues, row)


def test_word_hash_is_the_same_in_every_process():
    words = ["minhash", "straße", "東京", ""]
    code = f"from filters.minhash import word_hash; print(word_hash({words!r}).tolist())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(word_hash(words).tolist())
    assert word_hash(words).dtype == np.uint64 and len(set(word_hash(words).tolist())) == 4


def test_estimated_jaccard_tracks_true_jaccard():
    base = " ".join(SENTENCES)
    words = base.split()
    for edits in (1, 3, 8):
        copy = " ".join("EDITED" if i % (len(words) // edits) == 7 else w for i, w in enumerate(words))
        sig = minhash_signatures([base, copy], num_perm=256)
        assert abs(estimated_jaccard(sig[0], sig[1]) - jaccard(base, copy)) < 0.1


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
