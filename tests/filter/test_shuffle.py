"""The shuffle through files both dedups group by: every value in exactly one reducer, no row lost or doubled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.filter.shuffle import read_block, reducer_of, reducers_for, write_blocks

SCHEMA = pa.schema([("h", pa.uint64()), ("row", pa.int64()), ("sets", pa.list_(pa.uint32()))])


def hashed_rows(n: int, distinct: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, distinct, n).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    sets = [sorted(set(rng.integers(0, 100, rng.integers(0, 5)).tolist())) for _ in range(n)]
    return pa.table([pa.array(values), pa.array(np.arange(n) + seed * 10_000), pa.array(sets, pa.list_(pa.uint32()))],
                    schema=SCHEMA)


def test_every_value_reaches_exactly_one_reducer_with_its_rows_whole(tmp_path: Path) -> None:
    reducers = reducers_for(20)
    assert reducers == 3  # 20 inputs, 8 per reducer
    inputs = [hashed_rows(100, 30, seed) for seed in range(20)]
    paths = [tmp_path / f"in-{k}.arrow" for k in range(20)]
    for table, path in zip(inputs, paths, strict=True):
        summary = write_blocks(table, reducer_of(table["h"].to_numpy(), reducers), reducers, path)
        assert summary["rows"] == 100 and summary["bytes"] == path.stat().st_size
    blocks = [read_block(paths, j, SCHEMA) for j in range(reducers)]
    values = [set(b["h"].to_pylist()) for b in blocks]
    everything = pa.concat_tables(inputs)
    assert sum(map(len, values)) == len(set().union(*values)) == len(set(everything["h"].to_pylist()))
    for j, block in enumerate(blocks):
        assert (block["h"].to_numpy() % np.uint64(reducers) == j).all()
    together = pa.concat_tables(blocks).sort_by("row")
    assert together.equals(everything.sort_by("row"))  # every row once, its list column intact


def test_an_empty_input_or_block_reads_as_an_empty_table(tmp_path: Path) -> None:
    empty = SCHEMA.empty_table()
    write_blocks(empty, np.empty(0, dtype=np.intp), 4, tmp_path / "empty.arrow")
    table = hashed_rows(3, 1, 0)  # one value: a single reducer gets all rows
    write_blocks(table, reducer_of(table["h"].to_numpy(), 4), 4, tmp_path / "one.arrow")
    blocks = [read_block([tmp_path / "empty.arrow", tmp_path / "one.arrow"], j, SCHEMA) for j in range(4)]
    assert sorted(len(b) for b in blocks) == [0, 0, 0, 3]
    assert all(b.schema.equals(SCHEMA) for b in blocks)
