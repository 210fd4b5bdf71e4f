"""Connected components of an edge list on a cluster, as rounds of passes over edge files.

Large-star and small-star steps alternate (Kiveris et al., "Connected Components in MapReduce and
Beyond", 2014; the kernels are ``filters.minhash.large_star`` / ``small_star``): each step is one
task per reducer over the edges of the nodes hashed to it, and writes its edges hashed for the next
step. Only the number of edges each step changed reaches the driver; when a round changes none,
every component is a star around its smallest node, and ``labels`` names each node's label (that
node) and its component's size. A chain of n nodes takes O(log n) rounds; a component lives in the
files of one step, never in one process (except its star's centre's task, which holds one row per
member: 16 bytes each).

Edge files are those of ``shuffle.write_blocks``: columns ``node``, ``neighbour`` (int64), one file
per reducer (``part-NNNNN.arrow``), hashed on ``node``, each edge in both directions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from filters.minhash import large_star, small_star
from pipeline.filter.passes import Passes
from pipeline.filter.shuffle import read_block, reducer_of, write_blocks
from pipeline.rundir import block_path

EDGES = pa.schema([("node", pa.int64()), ("neighbour", pa.int64())])
LABELS = pa.schema([("key", pa.int64()), ("label", pa.int64()), ("size", pa.int64())])


def edge_table(node: np.ndarray, neighbour: np.ndarray, both: bool = True) -> pa.Table:
    """Edges as a table of ``EDGES`` (``both``: each edge in both directions)."""
    if both:
        node, neighbour = np.concatenate([node, neighbour]), np.concatenate([neighbour, node])
    return pa.table([pa.array(node, pa.int64()), pa.array(neighbour, pa.int64())], schema=EDGES)


def _edges(folder: str, reducers: int, reducer: int) -> tuple[np.ndarray, np.ndarray]:
    table = read_block([block_path(Path(folder), i) for i in range(reducers)], reducer, EDGES)
    return table["node"].to_numpy(), table["neighbour"].to_numpy()


def _large(source: str, reducers: int, reducer: int, folder: str) -> dict:
    larger, smaller, changes = large_star(*_edges(source, reducers, reducer))
    table = edge_table(larger, smaller, both=False)  # small-star groups an edge by its larger node
    return {"files": [write_blocks(table, reducer_of(larger, reducers), reducers, block_path(Path(folder), reducer))],
            "changes": changes}


def _small(source: str, reducers: int, reducer: int, folder: str) -> dict:
    larger, smaller, changes = small_star(*_edges(source, reducers, reducer))
    table = edge_table(larger, smaller)
    node = table["node"].to_numpy()
    return {"files": [write_blocks(table, reducer_of(node, reducers), reducers, block_path(Path(folder), reducer))],
            "changes": changes}


def connected_components(passes: Passes, source: str, reducers: int) -> tuple[str, list[int]]:
    """Run large-star / small-star rounds from the edges of pass ``source`` until a round changes
    no edge; returns the pass holding the final stars and the edges changed per step."""
    changed: list[int] = []
    previous, k = source, 0
    while True:
        k += 1
        for step, fn in (("large", _large), ("small", _small)):
            name = f"{step}-{k}"
            summaries = passes.run(name, fn, [(str(passes.folder_of(previous)), reducers, j,
                                               str(passes.folder_of(name))) for j in range(reducers)])
            changed.append(sum(s["changes"] for s in summaries))
            previous = name
        if changed[-1] == changed[-2] == 0:
            return previous, changed


def _labels(source: str, reducers: int, reducer: int, folder: str, shift: int) -> dict:
    node, neighbour = _edges(source, reducers, reducer)
    centre = node < neighbour  # a star's centre is its smallest node: the rows grouped at it
    root, leaf = node[centre], neighbour[centre]
    order = np.lexsort((leaf, root))
    root, leaf = root[order], leaf[order]
    keep = np.ones(len(root), dtype=bool)
    keep[1:] = (root[1:] != root[:-1]) | (leaf[1:] != leaf[:-1])
    root, leaf = root[keep], leaf[keep]
    roots, counts = np.unique(root, return_counts=True)
    key = np.concatenate([roots, leaf])
    label = np.concatenate([roots, root])
    size = np.concatenate([counts + 1, np.repeat(counts + 1, counts)])
    table = pa.table([pa.array(key, pa.int64()), pa.array(label, pa.int64()), pa.array(size, pa.int64())],
                     schema=LABELS)
    route = reducer_of(key >> np.int64(shift), reducers)
    return {"files": [write_blocks(table, route, reducers, block_path(Path(folder), reducer))],
            "components": len(roots), "nodes": len(key)}


def labels(passes: Passes, stars: str, reducers: int, name: str = "labels", shift: int = 0) -> list[dict]:
    """Pass ``name``: ``key``, ``label`` (smallest node of its component) and ``size`` of every node of
    the stars of pass ``stars``, hashed on ``key >> shift`` (dedup: on the key's partition)."""
    return passes.run(name, _labels, [(str(passes.folder_of(stars)), reducers, j, str(passes.folder_of(name)), shift)
                                      for j in range(reducers)], params={"shift": shift})
