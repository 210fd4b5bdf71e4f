"""Sources, validation split, packing and the weighted mixture plan."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import TrainError
from pipeline.sources import RowCondition, SourceConfig, read_source, validation_mask
from pipeline.train.data import MixtureSampler, interleave, pack_sequences


def test_packing_frames_every_document_with_bos_and_eos():
    docs = [[10, 11, 12], [20], [30, 31, 32, 33, 34]]
    rows = pack_sequences(docs, seq_len=4, bos=1, eos=2)
    stream = [1, 10, 11, 12, 2, 1, 20, 2, 1, 30, 31, 32, 33, 34, 2]
    assert rows.shape == (3, 5)  # 15 tokens -> three full rows of seq_len + 1, nothing left over
    assert rows.ravel().tolist() == stream


def test_packing_drops_or_pads_the_remainder():
    docs = [[5] * 6]  # 8 framed tokens
    assert pack_sequences(docs, seq_len=4, bos=1, eos=2).tolist() == [[1, 5, 5, 5, 5]]
    padded = pack_sequences(docs, seq_len=4, bos=1, eos=2, pad=0)
    assert padded.tolist() == [[1, 5, 5, 5, 5], [5, 5, 2, 0, 0]]


def test_packing_keeps_the_token_dtype_and_takes_empty_input():
    docs = [np.array([7, 8], dtype=np.uint16), np.array([], dtype=np.uint16)]
    rows = pack_sequences(docs, seq_len=2, bos=1, eos=2, pad=0, dtype=np.uint16)
    assert rows.dtype == np.uint16 and rows.tolist() == [[1, 7, 8], [2, 1, 2]]
    assert pack_sequences([], seq_len=4, bos=1, eos=2).shape == (0, 5)


def test_mixture_token_shares_track_the_weights_at_every_budget():
    """Unequal weights on a small budget: exact counts (35/10/5 of 50 rows; random draws gave 33/14/3),
    and every prefix of the plan (any step of a run) within about one row of the weights."""
    weights = {"a": 0.7, "b": 0.2, "c": 0.1}
    sources = {"a": np.zeros((50, 9)), "b": np.ones((7, 9)), "c": np.full((3, 9), 2)}
    sampler = MixtureSampler(sources, weights, total_rows=50, seed=3)
    assert sampler.counts(50) == {"a": 35, "b": 10, "c": 5}
    rows = sampler.rows(0, 50)  # rows really come from the planned source
    assert np.bincount(rows[:, 0].astype(int)).tolist() == [35, 10, 5]
    plan = interleave([0.55, 0.3, 0.1, 0.05], 2000)
    seen = np.cumsum(np.eye(4, dtype=int)[plan], axis=0)
    expected = np.outer(np.arange(1, 2001), [0.55, 0.3, 0.1, 0.05])
    assert np.abs(seen - expected).max() <= 1.05
    shares = seen[99:] / np.arange(100, 2001)[:, None]  # from 100 rows on: within 1 point
    assert np.abs(shares - [0.55, 0.3, 0.1, 0.05]).max() < 0.011
    assert np.array_equal(interleave([0.55, 0.3, 0.1, 0.05], 2000), plan)  # deterministic


def test_mixture_plan_is_a_function_of_the_seed_and_visits_every_row():
    sources = {"a": np.arange(20).reshape(10, 2), "b": np.arange(100, 120).reshape(10, 2)}
    one = MixtureSampler(sources, {"a": 1, "b": 1}, 200, seed=7)
    two = MixtureSampler(sources, {"a": 1, "b": 1}, 200, seed=7)
    other = MixtureSampler(sources, {"a": 1, "b": 1}, 200, seed=8)
    assert np.array_equal(one.rows(0, 200), two.rows(0, 200))
    assert np.array_equal(one.rows(37, 5), two.rows(0, 200)[37:42])  # random access = data position
    assert not np.array_equal(one.rows(0, 200), other.rows(0, 200))
    first_epoch = [tuple(r) for r in one.rows(0, 200) if r[0] < 100][:10]
    assert sorted(first_epoch) == [(2 * i, 2 * i + 1) for i in range(10)]


def test_validation_split_is_stable_and_never_everything():
    ids = [f"doc-{i}" for i in range(1000)]
    mask = validation_mask(ids, 0.1)
    assert 60 < mask.sum() < 140
    assert np.array_equal(mask[::-1], validation_mask(ids[::-1], 0.1))  # order-independent
    assert validation_mask(["x", "y"], 0.01).sum() == 1


def test_source_filters_select_rows(run_dir):
    top = SourceConfig(paths=["{run_dir}/filtered/part-*.parquet"],
                       filters=[RowCondition(column="edu_score", op=">=", percentile=75)])
    chat = SourceConfig(paths=["{run_dir}/generated/*.parquet"],
                        filters=[RowCondition(column="template", op="==", value="conversation")])
    assert len(read_source("top", top, run_dir)) == 40  # top quarter of 160 web rows
    chats = read_source("chat", chat, run_dir)
    assert len(chats) == 18 and chats["text"].str.startswith("Student:").all()


def test_empty_and_missing_sources_are_named(run_dir):
    with pytest.raises(TrainError, match=r"train.sources.web.paths.*empty"):
        read_source("web", SourceConfig(paths=[]), run_dir)
    with pytest.raises(TrainError, match=r"train.sources.web: .*nowhere/part-\*.parquet: no input files"):
        read_source("web", SourceConfig(paths=["{run_dir}/nowhere/part-*.parquet"]), run_dir)
    none_left = SourceConfig(paths=["{run_dir}/generated/*.parquet"],
                             filters=[RowCondition(column="template", op="==", value="poem")])
    with pytest.raises(TrainError, match="train.sources.poems: no documents left"):
        read_source("poems", none_left, run_dir)
    with pytest.raises(TrainError, match="needs column 'edu_score'"):
        read_source("x", SourceConfig(paths=["{run_dir}/generated/*.parquet"],
                                      filters=[RowCondition(column="edu_score", op=">", value=1)]), run_dir)
