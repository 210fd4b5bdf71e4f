"""The hash shuffle both dedups group by: every value in exactly one reducer, no row lost or doubled."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from pipeline.filter import shuffle
from pipeline.filter.shuffle import shuffle_reduce, split_by_hash


def hashed_rows(n: int = 2000, distinct: int = 50) -> pd.DataFrame:
    values = np.random.default_rng(0).integers(0, distinct, n).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return pd.DataFrame({"h": values, "row": np.arange(n)})


def test_split_by_hash_cuts_rows_by_hash_modulo_reducers():
    rows = hashed_rows(300)
    pieces = split_by_hash(rows, "h", 4)
    assert len(pieces) == 4
    for j, piece in enumerate(pieces):
        assert (piece["h"].to_numpy() % np.uint64(4) == j).all()
    assert sorted(pd.concat(pieces)["row"]) == list(range(300))


@pytest.mark.parametrize("single_stage_inputs", [shuffle.SINGLE_STAGE_INPUTS, 0], ids=["one-stage", "dask"])
def test_every_value_reaches_exactly_one_reducer(monkeypatch, single_stage_inputs):
    monkeypatch.setattr(shuffle, "SINGLE_STAGE_INPUTS", single_stage_inputs)
    rows = hashed_rows()
    frame = dd.from_pandas(rows, npartitions=20)

    def count(part: pd.DataFrame) -> pd.DataFrame:
        return part.assign(copies=part.groupby("h")["row"].transform("size"))

    reduced = dask.compute(*shuffle_reduce(frame, "h", count, meta=count(rows.iloc[:0])))
    assert len(reduced) == 3  # 20 inputs, 8 per reducer
    values = [set(part["h"]) for part in reduced]
    assert sum(map(len, values)) == len(set().union(*values)) == rows["h"].nunique()
    together = pd.concat(reduced).sort_values("row", ignore_index=True)
    assert together["row"].tolist() == rows["row"].tolist()
    assert (together["copies"] == rows.groupby("h")["row"].transform("size")).all()
