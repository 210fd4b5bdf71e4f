"""Connected components as passes over edge files: the same labels as the in-process kernel
(filters.minhash.connected_components), with only change counts reaching the driver."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from filters.minhash import connected_components as in_process_components
from pipeline.cluster import local_threads
from pipeline.filter.components import connected_components, edge_table, labels
from pipeline.filter.passes import Passes
from pipeline.filter.shuffle import read_table, reducer_of, write_blocks
from pipeline.rundir import block_path

REDUCERS = 3


def components(tmp_path: Path, src: np.ndarray, dst: np.ndarray) -> tuple[pd.DataFrame, list[int], Passes]:
    """``key``, ``label``, ``size`` of every node of the edges, computed as passes on 2 threads."""
    source = tmp_path / "passes" / "edges"
    source.mkdir(parents=True)
    # the edges as the verification pass leaves them: spread over files, both directions, by node
    for k, at in enumerate(np.array_split(np.arange(len(src)), REDUCERS)):
        table = edge_table(src[at], dst[at])
        write_blocks(table, reducer_of(table["node"].to_numpy(), REDUCERS), REDUCERS, block_path(source, k))
    with local_threads(2) as client:
        passes = Passes(tmp_path / "passes", "test", client)
        stars, changed = connected_components(passes, "edges", REDUCERS)
        labels(passes, stars, REDUCERS)
    found = [read_table(block_path(passes.folder_of("labels"), j)).to_pandas() for j in range(REDUCERS)]
    return pd.concat(found, ignore_index=True), changed, passes


def check(found: pd.DataFrame, src: np.ndarray, dst: np.ndarray) -> None:
    reference = in_process_components(pd.DataFrame({"src": src, "dst": dst}))
    reference = reference[reference["node"].isin(np.concatenate([src[src != dst], dst[src != dst]]))]
    reference = reference.assign(size=reference.groupby("label")["node"].transform("size"))
    got = found.sort_values("key", ignore_index=True)
    assert got["key"].is_unique
    assert got["key"].tolist() == sorted(reference["node"].tolist())
    expected = reference.set_index("node").loc[got["key"]]
    assert got["label"].tolist() == expected["label"].tolist()
    assert got["size"].tolist() == expected["size"].tolist()


@pytest.mark.parametrize("seed", range(4))
def test_random_graphs_get_the_labels_of_the_in_process_kernel(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 2000))
    src = rng.integers(0, n, n // 2).astype(np.int64) * 7 + (1 << 33)  # spread keys, several partitions
    dst = rng.integers(0, n, n // 2).astype(np.int64) * 7 + (1 << 33)
    found, changed, _ = components(tmp_path, src, dst)
    check(found, src, dst)
    assert changed[-2:] == [0, 0] and sum(changed[:-2]) > 0  # only the last round changes nothing


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
def test_a_long_chain_becomes_one_component_in_few_rounds(tmp_path: Path, order: str) -> None:
    n = 3000
    nodes = np.arange(n, dtype=np.int64)
    if order == "descending":
        nodes = nodes[::-1].copy()
    elif order == "shuffled":
        nodes = np.random.default_rng(7).permutation(n)
    found, changed, _ = components(tmp_path, nodes[1:], nodes[:-1])
    check(found, nodes[1:], nodes[:-1])
    assert set(found["label"]) == {0} and set(found["size"]) == {n}
    assert len(changed) // 2 <= 2 * int(np.log2(n))  # rounds: logarithmic in the chain's length


def test_a_giant_component_and_many_small_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    giant = rng.permutation(20_000).astype(np.int64) + 1000  # one component of 20,000 nodes
    hubs = rng.choice(giant, 50)
    src = [giant, rng.choice(giant, 5000)]  # every node linked to a hub, then random links
    dst = [rng.choice(hubs, len(giant)), rng.choice(giant, 5000)]
    pairs = np.arange(100, 600, 2, dtype=np.int64)  # 250 components of two
    src, dst = np.concatenate([*src, pairs]), np.concatenate([*dst, pairs + 1])
    found, _, passes = components(tmp_path, src, dst)
    check(found, src, dst)
    assert found["label"].nunique() == 251 and found["size"].max() == 20_000
    # the driver saw one count per step and per task, no node: every record holds small summaries
    for record in passes.folder.glob("*/manifest.json"):
        assert len(record.read_text()) < 20_000, record
        assert all(set(t) <= {"files", "changes", "components", "nodes"} for t in json.loads(record.read_text())["tasks"])
