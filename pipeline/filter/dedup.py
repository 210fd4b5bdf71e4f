"""Exact and MinHash-LSH near-duplicate removal over a corpus on a cluster: the corpus-wide passes;
the in-memory kernels (hashes, keep order, Jaccard, stars, component steps) are ``filters.minhash``.

Every pass is Dask tasks over files (``pipeline.filter.passes``): each task reads its block of the
files of the pass before (``pipeline.filter.shuffle``) and writes its own, and a pass is recorded
when all its tasks are done. A killed worker costs its tasks; a killed driver resumes at the first
pass without a record; the driver holds per-task metadata only, never a per-document table.
Documents travel between passes as integer keys (partition << 32 | row); ids, lengths, scores and
shingle sets are read back from a partition only for the documents a duplicate group needs, and
each partition's decisions come back to it alone.

The passes, in the order of the data flow (P partitions, R = P / 8 reducers):

1. ``hashes`` (P tasks): per partition, one word split gives each document's exact hash (rows
   ``key, exact_hash``) and its LSH buckets (rows ``bucket, key``: one uint64 names band and band
   hash, 16 bytes per document and band); signatures are never stored;
2. ``exact`` and ``banding`` (R tasks each): the rows regrouped by exact hash / by bucket; only
   groups of two or more go on (the copies; the rows of shared buckets);
3. ``exact_docs``, ``exact_keep``: each copy's id, length and score read back from its partition,
   the copies regrouped by hash, and every copy but the best of its group (keep rule below) lost;
4. ``members``: per partition, the shared buckets' rows less the exact losers; each remaining
   document's id, length, score and shingle set (sorted distinct uint32) is written beside its
   partition (``members/part-P``), and its bucket rows go on with its id;
5. ``edges``: bucket rows regrouped (a bucket that lost members to exact dedup may no longer be
   shared) and every member linked to the member with the smallest id (a star, not all pairs);
6. ``candidates``, ``verified``: each edge sent to the partition of its first document, which adds
   that document's shingles, then to the partition of the second, where the exact Jaccard of all
   its edges' sets is computed at once in numpy; an edge stays if it reaches ``min_similarity``;
7. ``large-K``, ``small-K``: connected components of the verified edges, in rounds until no edge
   changes (``pipeline.filter.components``); then ``labels``: each document's component and its size;
8. ``cluster_docs``, ``clusters``: each component's members with their ids, lengths, scores and
   shingles gathered by component and visited best first (highest ``score``, then longest text,
   then smallest id): a member is removed if it is that similar to a member already kept, else it
   is kept; so each cluster keeps its best document and every removed one resembles a kept one
   (no chaining). A component of more than ``max_cluster`` members is resolved without shingles:
   its best member is kept and every other one removed (each is linked to the kept one by a chain
   of verified pairs, as datatrove keeps one document per component);
9. ``decisions``: exact losers and cluster decisions sent back by partition: one file per partition
   that has any (``row, exact_dup, cluster_id, cluster_size, near_dup``), read by that partition's
   write task alone.

``cluster_id`` is the smallest id of a cluster, so results do not depend on partitioning or on
the number of workers. ``exact_dedup`` and ``minhash_dedup`` run the same passes over a Dask or a
pandas DataFrame for notebooks and scripts: its partitions are written once to a work folder.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from filters.minhash import (
    MAX_NGRAM,
    band_hashes,
    bucket_stars,
    dedup_hashes,
    exact_hashes,
    keep_best,
    lsh_buckets,
    lsh_params,
    pair_jaccard,
    partition_shingles,
    resolve_clusters,
    set_offsets,
    signatures_from_flat,
)
from filters.normalize import arrow_texts
from pipeline.errors import FilterError
from pipeline.filter.components import LABELS, connected_components, edge_table, labels
from pipeline.filter.passes import Passes
from pipeline.filter.shuffle import (
    read_block,
    read_table,
    reducer_of,
    reducers_for,
    write_blocks,
    write_table,
)
from pipeline.rundir import block_path, shard_path
from pipeline.timing import timed

log = logging.getLogger(__name__)

EXACT_DUP = "exact_dup"
NEAR_DUP = "near_dup"
DEDUP_REASONS = {EXACT_DUP: "exact_dedup", NEAR_DUP: "minhash"}
"""The reason of each dedup pass (also the name of its flag column) and its stage (its config key)."""

# Band parameters weight a missed duplicate 9x a false candidate: candidates are verified on their
# shingle sets afterwards, so a false candidate costs a comparison while a miss is final.
FALSE_POSITIVE_WEIGHT = 0.1
FALSE_NEGATIVE_WEIGHT = 0.9

KEY_BITS = 32  # a document's key: partition number << KEY_BITS | row in the partition
MAX_CLUSTER = 1000
"""Components of more members than this are resolved without shingles (``filter.minhash.max_cluster``)."""

SHINGLES = pa.list_(pa.uint32())
EXACT_ROWS = pa.schema([("key", pa.int64()), ("exact_hash", pa.uint64())])
BUCKET_ROWS = pa.schema([("bucket", pa.uint64()), ("key", pa.int64())])
LOSERS = pa.schema([("key", pa.int64())])
EDGE_KEYS = pa.schema([("src", pa.int64()), ("dst", pa.int64())])


@dataclass(frozen=True)
class MinHashParams:
    """MinHash-LSH settings, resolved: the band layout and the Jaccard a verified pair needs
    (``min_similarity`` 0: candidates are not verified)."""

    threshold: float
    num_perm: int
    ngram: int
    seed: int
    bands: int
    rows: int
    min_similarity: float
    max_cluster: int = MAX_CLUSTER

    @classmethod
    def resolve(cls, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 0,
                bands: int | None = None, rows: int | None = None, verify: bool = True,
                verify_threshold: float | None = None, max_cluster: int = MAX_CLUSTER) -> MinHashParams:
        """Derive ``bands`` x ``rows`` from ``threshold`` unless given; FilterError on a bad value."""
        if bands is None or rows is None:
            bands, rows = lsh_params(threshold, num_perm, FALSE_POSITIVE_WEIGHT, FALSE_NEGATIVE_WEIGHT)
        if not 1 <= ngram <= MAX_NGRAM:
            raise FilterError(f"filter.minhash.ngram: must be between 1 and {MAX_NGRAM}, got {ngram}")
        if bands * rows > num_perm:
            raise FilterError(f"filter.minhash: bands * rows = {bands * rows} exceeds num_perm = {num_perm}")
        if max_cluster < 2:
            raise FilterError(f"filter.minhash.max_cluster: must be at least 2, got {max_cluster}")
        min_similarity = (threshold if verify_threshold is None else verify_threshold) if verify else 0.0
        return cls(threshold, num_perm, ngram, seed, bands, rows, min_similarity, max_cluster)


def keys_of(number: int, rows: np.ndarray) -> np.ndarray:
    """The keys of rows ``rows`` of partition ``number``."""
    return (np.int64(number) << np.int64(KEY_BITS)) | np.asarray(rows, dtype=np.int64)


def partition_of(keys: np.ndarray) -> np.ndarray:
    return np.asarray(keys, dtype=np.int64) >> np.int64(KEY_BITS)


def row_of(keys: np.ndarray) -> np.ndarray:
    return np.asarray(keys, dtype=np.int64) & np.int64((1 << KEY_BITS) - 1)


def by_partition(keys: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(partition, positions in keys)`` of every partition the keys name, in order."""
    part = partition_of(keys)
    order = np.argsort(part, kind="stable")
    cuts = np.flatnonzero(np.diff(part[order])) + 1
    for positions in np.split(order, cuts) if len(order) else []:
        yield int(part[positions[0]]), positions


@dataclass(frozen=True)
class Corpus:
    """Where the passes read documents back: partition ``p`` is the file ``folder/part-NNNNN.parquet``
    (a scored shard) or, for ``kind="docs"``, ``folder/docs-NNNNN.arrow``; its row ``r`` is the
    document of key ``(p, r)``. The columns: text, id (of Arrow type ``id_type``), score (may be
    absent: no score) and length (absent: counted from the text)."""

    folder: str
    id_type: pa.DataType
    kind: str = "parquet"
    text: str = "text"
    id: str = "id"
    score: str = "edu_score"
    length: str | None = None

    def path(self, partition: int) -> Path:
        if self.kind == "docs":
            return block_path(Path(self.folder), partition, "docs")
        return shard_path(Path(self.folder), partition)

    def read(self, partition: int, rows: np.ndarray, text: bool = False) -> pa.Table:
        """``doc``, ``length``, ``score`` (and ``text``) of rows ``rows`` of a partition, in that order."""
        path = self.path(partition)
        whole = read_table(path) if self.kind == "docs" else None  # memory-mapped: columns read when touched
        names = whole.column_names if whole is not None else pq.read_schema(path).names
        wanted = [c for c in (self.id, self.score, self.length) if c and c in names]
        if text or self.length not in names:
            wanted.append(self.text)
        table = whole.select(wanted) if whole is not None else pq.read_table(path, columns=wanted)
        table = table.take(pa.array(rows, pa.int64()))
        if self.length in names:
            length = table[self.length].cast(pa.int64())
        else:
            length = pc.fill_null(pc.utf8_length(table[self.text]), 0).cast(pa.int64())
        score = table[self.score].cast(pa.float64()) if self.score in names else \
            pa.nulls(len(table), pa.float64())
        columns = {"doc": table[self.id].cast(self.id_type), "length": length, "score": score}
        if text:
            columns["text"] = table[self.text]
        return pa.table(columns)


def _schema(corpus: Corpus, *fields: tuple[str, pa.DataType]) -> pa.Schema:
    """A schema of ``fields`` where the type ``None`` stands for the corpus's id type."""
    return pa.schema([(name, corpus.id_type if kind is None else kind) for name, kind in fields])


def _files(folder: str, count: int, kind: str = "part") -> list[Path]:
    return [block_path(Path(folder), i, kind) for i in range(count)]


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy()


# ---------------------------------------------------------------- pass 1: hashes

def hash_partition(texts: Any, rows: np.ndarray, number: int, exact: bool, params: MinHashParams | None,
                   folder: str, reducers: int) -> dict[str, Any]:
    """The dedup hashes of the documents ``texts`` (rows ``rows`` of partition ``number``), written into
    ``folder``: ``exact-NNNNN.arrow`` (``key, exact_hash``) and ``bands-NNNNN.arrow`` (``bucket, key``),
    each ordered by reducer. Returns the files and the seconds of each hash."""
    seconds: dict[str, float] = {}
    files = []
    keys = keys_of(number, rows)
    shingles = None
    if exact:
        with timed(seconds, "exact_hashes"):  # with minhash too: the word split both share
            if params is not None:
                hashes, *shingles = dedup_hashes(texts, params.ngram)
            else:
                hashes = exact_hashes(texts)
            table = pa.table([pa.array(keys), pa.array(hashes, pa.uint64())], schema=EXACT_ROWS)
            files.append(write_blocks(table, reducer_of(hashes, reducers), reducers,
                                      block_path(Path(folder), number, "exact")))
    if params is not None:
        with timed(seconds, "signatures"):
            flat, sizes = shingles if shingles else partition_shingles(texts, params.ngram)
            has = np.flatnonzero(sizes > 0)
            signatures = signatures_from_flat(flat, sizes, params.num_perm, params.seed)[has]
            buckets = lsh_buckets(band_hashes(signatures, params.bands, params.rows)).ravel()
            table = pa.table([pa.array(buckets, pa.uint64()), pa.array(keys[has].repeat(params.bands))],
                             schema=BUCKET_ROWS)
            files.append(write_blocks(table, reducer_of(buckets, reducers), reducers,
                                      block_path(Path(folder), number, "bands")))
    return {"files": files, "seconds": seconds, "documents": len(keys)}


# ---------------------------------------------------------------- exact dedup

def _groups_of_two_or_more(values: np.ndarray) -> np.ndarray:
    """Positions of the rows whose value occurs at least twice."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    same = ordered[1:] == ordered[:-1]
    many = np.zeros(len(values), dtype=bool)
    many[1:] |= same
    many[:-1] |= same
    return np.sort(order[many])


def _shared(source: str, partitions: int, reducer: int, folder: str, reducers: int, kind: str,
            schema: pa.Schema, column: str) -> dict[str, Any]:
    """Rows of block ``reducer`` of the ``kind`` files whose ``column`` value has two or more rows
    (copies; shared buckets), sent on by partition."""
    rows = read_block(_files(source, partitions, kind), reducer, schema)
    shared = rows.take(pa.array(_groups_of_two_or_more(_column(rows, column))))
    route = reducer_of(partition_of(_column(shared, "key")), reducers)
    return {"files": [write_blocks(shared, route, reducers, block_path(Path(folder), reducer))],
            "rows": len(shared)}


def _copy_docs(source: str, reducers: int, reducer: int, folder: str, corpus: Corpus) -> dict[str, Any]:
    """The copies of block ``reducer``, with their id, length and score read from their partitions,
    sent on by exact hash."""
    copies = read_block(_files(source, reducers), reducer, EXACT_ROWS)
    keys = _column(copies, "key")
    pieces = []
    for partition, at in by_partition(keys):
        docs = corpus.read(partition, row_of(keys[at]))
        pieces.append(pa.table({"exact_hash": copies["exact_hash"].take(pa.array(at)), "key": pa.array(keys[at]),
                                **{c: docs[c] for c in docs.column_names}}))
    schema = _schema(corpus, ("exact_hash", pa.uint64()), ("key", pa.int64()), ("doc", None),
                     ("length", pa.int64()), ("score", pa.float64()))
    table = pa.concat_tables(pieces).cast(schema) if pieces else schema.empty_table()
    route = reducer_of(_column(table, "exact_hash"), reducers)
    return {"files": [write_blocks(table, route, reducers, block_path(Path(folder), reducer))]}


def _exact_losers(source: str, reducers: int, reducer: int, folder: str, corpus: Corpus) -> dict[str, Any]:
    """Every copy of block ``reducer`` but the best of its group, sent on by partition."""
    schema = _schema(corpus, ("exact_hash", pa.uint64()), ("key", pa.int64()), ("doc", None),
                     ("length", pa.int64()), ("score", pa.float64()))
    copies = read_block(_files(source, reducers), reducer, schema).to_pandas()
    best = keep_best(copies, "exact_hash").to_numpy() if len(copies) else np.zeros(0, dtype=bool)
    losers = np.sort(copies["key"].to_numpy()[~best])
    table = pa.table([pa.array(losers, pa.int64())], schema=LOSERS)
    return {"files": [write_blocks(table, reducer_of(partition_of(losers), reducers), reducers,
                                   block_path(Path(folder), reducer))],
            "losers": len(losers), "groups": int(copies["exact_hash"].nunique())}


def exact_passes(passes: Passes, corpus: Corpus, partitions: int, reducers: int) -> dict[str, Any]:
    """Passes ``exact``, ``exact_docs`` and ``exact_keep`` after ``hashes``; the loser counts."""
    hashes = str(passes.folder_of("hashes"))
    passes.run("exact", _shared, [(hashes, partitions, j, str(passes.folder_of("exact")), reducers, "exact",
                                   EXACT_ROWS, "exact_hash") for j in range(reducers)])
    passes.run("exact_docs", _copy_docs, [(str(passes.folder_of("exact")), reducers, j,
                                           str(passes.folder_of("exact_docs")), corpus) for j in range(reducers)])
    kept = passes.run("exact_keep", _exact_losers, [(str(passes.folder_of("exact_docs")), reducers, j,
                                                     str(passes.folder_of("exact_keep")), corpus)
                                                    for j in range(reducers)])
    return {"removed": sum(s["losers"] for s in kept), "groups": sum(s["groups"] for s in kept)}


# ---------------------------------------------------------------- MinHash dedup

def shingle_sets(texts: Any, ngram: int) -> pa.ListArray:
    """Each text's shingle set as sorted distinct uint32 hashes (an Arrow list per text)."""
    flat, sizes = partition_shingles(texts, ngram)
    n = len(sizes)
    # one sort for all documents, not one np.unique each: (document, shingle) pairs, distinct
    pairs = np.sort((np.repeat(np.arange(n, dtype=np.uint64), sizes) << np.uint64(32)) | flat)
    if len(pairs):
        pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
    offsets = np.searchsorted(pairs >> np.uint64(32), np.arange(n + 1, dtype=np.uint64)).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array((pairs & np.uint64(0xFFFFFFFF)).astype(np.uint32)))


def _members(shared_folder: str, losers_folder: str | None, reducers: int, reducer: int, folder: str,
             corpus: Corpus, ngram: int, shingles: bool) -> dict[str, Any]:
    """Block ``reducer`` of the shared buckets' rows, less the exact losers: per partition, the
    members' ids, lengths, scores and shingle sets into ``members/part-P``; their bucket rows, with
    their ids, sent on by bucket."""
    rows = read_block(_files(shared_folder, reducers), reducer, BUCKET_ROWS)
    bucket, keys = _column(rows, "bucket"), _column(rows, "key")
    if losers_folder is not None:
        lost = _column(read_block(_files(losers_folder, reducers), reducer, LOSERS), "key")
        alive = ~np.isin(keys, lost)
        bucket, keys = bucket[alive], keys[alive]
    files, docs, members = [], [], 0
    for partition, at in by_partition(keys):
        distinct = np.unique(keys[at])
        read = corpus.read(partition, row_of(distinct), text=shingles)
        table = {"key": pa.array(distinct), "doc": read["doc"], "length": read["length"], "score": read["score"]}
        if shingles:
            table["shingles"] = shingle_sets(read["text"], ngram)
        files.append(write_table(pa.table(table), block_path(Path(folder), partition)))
        docs.append(read["doc"].take(pa.array(np.searchsorted(distinct, keys[at]))))
        members += len(distinct)
    schema = _schema(corpus, ("bucket", pa.uint64()), ("key", pa.int64()), ("doc", None))
    order = np.concatenate([at for _, at in by_partition(keys)]) if len(keys) else np.empty(0, dtype=np.int64)
    table = pa.table([pa.array(bucket[order], pa.uint64()), pa.array(keys[order], pa.int64()),
                      pa.chunked_array(docs, corpus.id_type) if docs else pa.array([], corpus.id_type)],
                     schema=schema)
    files.append(write_blocks(table, reducer_of(_column(table, "bucket"), reducers), reducers,
                              block_path(Path(folder), reducer, "buckets")))
    return {"files": files, "members": members}


def _edges(source: str, reducers: int, reducer: int, folder: str, corpus: Corpus) -> dict[str, Any]:
    """The star edges of the buckets of block ``reducer`` that still have two or more members, sent
    on by the partition of their first document."""
    schema = _schema(corpus, ("bucket", pa.uint64()), ("key", pa.int64()), ("doc", None))
    rows = read_block(_files(source, reducers, "buckets"), reducer, schema)
    doc = rows["doc"].to_numpy(zero_copy_only=False)
    src, dst = bucket_stars(_column(rows, "bucket"), _column(rows, "key"), doc)
    table = pa.table([pa.array(src, pa.int64()), pa.array(dst, pa.int64())], schema=EDGE_KEYS)
    return {"files": [write_blocks(table, reducer_of(partition_of(src), reducers), reducers,
                                   block_path(Path(folder), reducer))]}


def _member_sets(members: str, partition: int, keys: np.ndarray) -> pa.Array:
    """The shingle sets of documents ``keys`` of a partition, from its ``members`` file."""
    table = read_table(block_path(Path(members), partition))
    return table["shingles"].take(pa.array(np.searchsorted(_column(table, "key"), keys)))


def _candidates(source: str, reducers: int, reducer: int, folder: str, members: str, verify: bool) -> dict[str, Any]:
    """The distinct candidate edges of block ``reducer``: with ``verify``, each with its first
    document's shingles, sent on by the partition of the second; else as verified edges."""
    edges = read_block(_files(source, reducers), reducer, EDGE_KEYS)
    src, dst = _distinct(_column(edges, "src"), _column(edges, "dst"))
    if not verify:
        table = edge_table(src, dst)
        return {"files": [write_blocks(table, reducer_of(_column(table, "node"), reducers), reducers,
                                       block_path(Path(folder), reducer))], "candidates": len(src)}
    pieces = [pa.table({"src": pa.array(src[at]), "dst": pa.array(dst[at]),
                        "shingles": _member_sets(members, partition, src[at])})
              for partition, at in by_partition(src)]
    schema = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("shingles", SHINGLES)])
    table = pa.concat_tables(pieces).cast(schema) if pieces else schema.empty_table()
    return {"files": [write_blocks(table, reducer_of(partition_of(_column(table, "dst")), reducers), reducers,
                                   block_path(Path(folder), reducer))], "candidates": len(src)}


def _distinct(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(src):
        return src, dst
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    new = np.ones(len(src), dtype=bool)
    new[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    return src[new], dst[new]


def _verified(source: str, reducers: int, reducer: int, folder: str, members: str,
              min_similarity: float) -> dict[str, Any]:
    """The candidate edges of block ``reducer`` whose two shingle sets have an exact Jaccard of
    ``min_similarity`` or more, computed per partition of their second document; both directions,
    hashed on their first node (``pipeline.filter.components``)."""
    schema = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("shingles", SHINGLES)])
    edges = read_block(_files(source, reducers), reducer, schema)
    dst = _column(edges, "dst")
    kept = []
    for partition, at in by_partition(dst):
        own = set_offsets(edges["shingles"].take(pa.array(at)))
        other = set_offsets(_member_sets(members, partition, dst[at]))
        kept.append(at[pair_jaccard(own, other) >= min_similarity])
    kept_at = np.sort(np.concatenate(kept)) if kept else np.empty(0, dtype=np.int64)
    table = edge_table(_column(edges, "src")[kept_at], dst[kept_at])
    return {"files": [write_blocks(table, reducer_of(_column(table, "node"), reducers), reducers,
                                   block_path(Path(folder), reducer))], "verified": len(kept_at)}


def _cluster_docs(source: str, reducers: int, reducer: int, folder: str, members: str, corpus: Corpus,
                  max_cluster: int, shingles: bool) -> dict[str, Any]:
    """The members of the components of block ``reducer`` with their ids, lengths, scores and (in a
    component of at most ``max_cluster``) shingles, from their partitions; sent on by component."""
    nodes = read_block(_files(source, reducers), reducer, LABELS)
    keys = _column(nodes, "key")
    pieces = []
    for partition, at in by_partition(keys):
        table = read_table(block_path(Path(members), partition))
        found = pa.array(np.searchsorted(_column(table, "key"), keys[at]))
        piece = {"key": pa.array(keys[at]), "label": nodes["label"].take(pa.array(at)),
                 "size": nodes["size"].take(pa.array(at)), "doc": table["doc"].take(found),
                 "length": table["length"].take(found), "score": table["score"].take(found)}
        if shingles:
            compared = _compared(_column(nodes, "size")[at], max_cluster)
            sets = table["shingles"].take(found)
            piece["shingles"] = pc.if_else(pa.array(compared), sets, pa.scalar([], SHINGLES))
        else:
            piece["shingles"] = pa.array([[]] * len(at), SHINGLES)
        pieces.append(pa.table(piece))
    schema = _cluster_schema(corpus)
    table = pa.concat_tables(pieces).cast(schema) if pieces else schema.empty_table()
    return {"files": [write_blocks(table, reducer_of(_column(table, "label"), reducers), reducers,
                                   block_path(Path(folder), reducer))]}


def _compared(size: np.ndarray, max_cluster: int) -> np.ndarray:
    """Which members of components of these sizes are resolved on their shingles: not those of a
    giant component (its best member is kept), nor those of a pair (its one edge is verified: the
    worse one resembles the better one)."""
    return (size > 2) & (size <= max_cluster)


def _cluster_schema(corpus: Corpus) -> pa.Schema:
    return _schema(corpus, ("key", pa.int64()), ("label", pa.int64()), ("size", pa.int64()), ("doc", None),
                   ("length", pa.int64()), ("score", pa.float64()), ("shingles", SHINGLES))


def _decision_schema(corpus: Corpus) -> pa.Schema:
    return _schema(corpus, ("key", pa.int64()), ("cluster_id", None), ("cluster_size", pa.int64()),
                   (NEAR_DUP, pa.bool_()))


def _clusters(source: str, reducers: int, reducer: int, folder: str, corpus: Corpus, min_similarity: float,
              max_cluster: int) -> dict[str, Any]:
    """The components of block ``reducer`` resolved (keep rule; see the module docstring): per member
    its ``cluster_id`` (the smallest id), ``cluster_size`` and ``near_dup``; sent on by partition."""
    table = read_block(_files(source, reducers), reducer, _cluster_schema(corpus))
    members = table.drop_columns(["shingles"]).to_pandas()
    label = members["label"].to_numpy()
    near = np.zeros(len(members), dtype=bool)
    compared = _compared(members["size"].to_numpy(), max_cluster)
    if compared.any():
        part = members[compared].reset_index(drop=True)
        near[compared] = resolve_clusters(label[compared], part["doc"].to_numpy(), part["score"].to_numpy(),
                                          part["length"].to_numpy(),
                                          set_offsets(table["shingles"].filter(pa.array(compared))), min_similarity)
    if (~compared).any():  # pairs and giant components: the best member is kept, the rest removed
        near[~compared] = ~keep_best(members[~compared].reset_index(drop=True), "label").to_numpy()
    small = members["size"].to_numpy() <= max_cluster
    cluster_id = members.groupby("label")["doc"].transform("min")
    out = pa.table([table["key"], pa.array(cluster_id, corpus.id_type, from_pandas=True), table["size"],
                    pa.array(near)], schema=_decision_schema(corpus))
    route = reducer_of(partition_of(_column(out, "key")), reducers)
    return {"files": [write_blocks(out, route, reducers, block_path(Path(folder), reducer))],
            "clusters": int(len(np.unique(label))), "clustered": len(members), "removed": int(near.sum()),
            "giant": int(len(np.unique(label[~small])))}


def _decisions(losers: str | None, clusters: str | None, reducers: int, reducer: int, folder: str,
               corpus: Corpus) -> dict[str, Any]:
    """The decisions of block ``reducer``, one file per partition: ``row``, ``exact_dup``,
    ``cluster_id`` (null: no cluster), ``cluster_size`` and ``near_dup``, by row."""
    schema = _decision_schema(corpus)
    lost = _column(read_block(_files(losers, reducers), reducer, LOSERS), "key") if losers else \
        np.empty(0, dtype=np.int64)
    near = read_block(_files(clusters, reducers), reducer, schema).sort_by("key") if clusters else \
        schema.empty_table()
    near_keys = _column(near, "key")
    keys = np.union1d(lost, near_keys)
    if len(near_keys):
        at = np.searchsorted(near_keys, keys)
        clustered = at < len(near_keys)
        clustered[clustered] = near_keys[at[clustered]] == keys[clustered]
        take = pa.array(np.where(clustered, at, 0), mask=~clustered)
        cluster_id, size = near["cluster_id"].take(take), near["cluster_size"].take(take)
        near_dup = pc.fill_null(near[NEAR_DUP].take(take), False)
    else:
        cluster_id, size = pa.nulls(len(keys), corpus.id_type), pa.nulls(len(keys), pa.int64())
        near_dup = pa.array(np.zeros(len(keys), dtype=bool))
    table = pa.table([pa.array(row_of(keys)), pa.array(np.isin(keys, lost)), cluster_id, size, near_dup],
                     schema=decision_schema(corpus.id_type))
    files = [write_table(table.take(pa.array(at)), block_path(Path(folder), partition))
             for partition, at in by_partition(keys)]
    return {"files": files}


def decision_schema(id_type: pa.DataType) -> pa.Schema:
    """The columns of a partition's decisions file."""
    return pa.schema([("row", pa.int64()), (EXACT_DUP, pa.bool_()), ("cluster_id", id_type),
                      ("cluster_size", pa.int64()), (NEAR_DUP, pa.bool_())])


@dataclass
class Found:
    """What ``find_duplicates`` found: where each partition's decisions are, and counts for stats."""

    decisions: Path
    exact: dict[str, Any] = field(default_factory=dict)
    minhash: dict[str, Any] = field(default_factory=dict)


def find_duplicates(passes: Passes, corpus: Corpus, partitions: int, reducers: int, exact: bool,
                    params: MinHashParams | None, clock: dict[str, float] | None = None) -> Found:
    """Every pass after ``hashes`` (which the caller has run): exact copies, then near-duplicates
    among the rest, then the decisions by partition (``decisions/part-P.arrow``; see the module
    docstring). ``clock`` gets the wall seconds of ``exact_dedup``, ``minhash`` and ``decisions``."""
    clock = {} if clock is None else clock
    found = Found(passes.folder_of("decisions"))
    folder = passes.folder_of
    if exact:
        with timed(clock, "exact_dedup"):
            found.exact = exact_passes(passes, corpus, partitions, reducers)
    clusters = None
    if params is not None:
        with timed(clock, "minhash"):
            found.minhash, clusters = _minhash_passes(passes, corpus, partitions, reducers, exact, params)
    with timed(clock, "decisions"):
        passes.run("decisions", _decisions, [(str(folder("exact_keep")) if exact else None,
                                              clusters and str(folder(clusters)), reducers, j,
                                              str(folder("decisions")), corpus) for j in range(reducers)])
    return found


def _minhash_passes(passes: Passes, corpus: Corpus, partitions: int, reducers: int, exact: bool,
                    params: MinHashParams) -> tuple[dict[str, Any], str | None]:
    folder = passes.folder_of
    verify = params.min_similarity > 0
    hashes = str(folder("hashes"))
    banded = passes.run("banding", _shared, [(hashes, partitions, j, str(folder("banding")), reducers, "bands",
                                              BUCKET_ROWS, "bucket") for j in range(reducers)])
    passes.run("members", _members, [(str(folder("banding")), str(folder("exact_keep")) if exact else None,
                                      reducers, j, str(folder("members")), corpus, params.ngram, verify)
                                     for j in range(reducers)], params={"ngram": params.ngram, "verify": verify})
    members = str(folder("members"))
    passes.run("edges", _edges, [(str(folder("members")), reducers, j, str(folder("edges")), corpus)
                                 for j in range(reducers)])
    candidates = passes.run("candidates", _candidates, [(str(folder("edges")), reducers, j, str(folder("candidates")),
                                                         members, verify) for j in range(reducers)],
                            params={"verify": verify})
    stats: dict[str, Any] = {"shared_bucket_rows": sum(s["rows"] for s in banded),
                             "candidate_pairs": sum(s["candidates"] for s in candidates)}
    source = "candidates"
    if verify:
        verified = passes.run("verified", _verified, [(str(folder("candidates")), reducers, j,
                                                       str(folder("verified")), members, params.min_similarity)
                                                      for j in range(reducers)],
                              params={"min_similarity": params.min_similarity})
        stats["verified_pairs"] = sum(s["verified"] for s in verified)
        source = "verified"
    else:
        stats["verified_pairs"] = stats["candidate_pairs"]
    stats.update(clusters=0, clustered_docs=0, removed=0, giant_clusters=0, component_steps=[])
    if not stats["verified_pairs"]:
        return stats, None
    stars, changed = connected_components(passes, source, reducers)
    labels(passes, stars, reducers, shift=KEY_BITS)
    passes.run("cluster_docs", _cluster_docs, [(str(folder("labels")), reducers, j, str(folder("cluster_docs")),
                                                members, corpus, params.max_cluster, verify)
                                               for j in range(reducers)], params={"max_cluster": params.max_cluster})
    resolved = passes.run("clusters", _clusters, [(str(folder("cluster_docs")), reducers, j, str(folder("clusters")),
                                                   corpus, params.min_similarity, params.max_cluster)
                                                  for j in range(reducers)])
    stats.update(clusters=sum(s["clusters"] for s in resolved), clustered_docs=sum(s["clustered"] for s in resolved),
                 removed=sum(s["removed"] for s in resolved), giant_clusters=sum(s["giant"] for s in resolved),
                 component_steps=changed)
    return stats, "clusters"


def read_decisions(folder: Path, partition: int, id_type: pa.DataType) -> pa.Table:
    """The decisions of one partition (an empty table when it has none)."""
    path = block_path(Path(folder), partition)
    return read_table(path) if path.exists() else decision_schema(id_type).empty_table()


def dedup_flags(ids: pd.Series, decisions: pa.Table, exact: bool, minhash: bool) -> dict[str, Any]:
    """The dedup columns of a partition whose ids are ``ids`` (in row order), from its decisions:
    ``exact_dup``; ``cluster_id`` (its own id when in no cluster), ``cluster_size``, ``near_dup``."""
    rows = _column(decisions, "row")
    flags: dict[str, Any] = {}
    if exact:
        flags[EXACT_DUP] = np.zeros(len(ids), dtype=bool)
        flags[EXACT_DUP][rows] = decisions[EXACT_DUP].to_numpy(zero_copy_only=False)
    if minhash:
        clustered = decisions["cluster_id"].is_valid().to_numpy(zero_copy_only=False)
        at = rows[clustered]
        cluster_id = ids.to_numpy(dtype=object, copy=True)
        cluster_id[at] = decisions["cluster_id"].filter(pa.array(clustered)).to_numpy(zero_copy_only=False)
        size = np.ones(len(ids), dtype=np.int64)
        size[at] = decisions["cluster_size"].filter(pa.array(clustered)).to_numpy(zero_copy_only=False)
        near = np.zeros(len(ids), dtype=bool)
        near[at] = decisions[NEAR_DUP].filter(pa.array(clustered)).to_numpy(zero_copy_only=False)
        flags.update(cluster_id=pd.Series(cluster_id, index=ids.index, dtype=ids.dtype), cluster_size=size,
                     **{NEAR_DUP: near})
    return flags


def minhash_stats(params: MinHashParams, found: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """The ``minhash`` entry of stats: band layout, pair, cluster and removal counts, seconds per pass."""
    return {"bands": params.bands, "rows": params.rows, "num_perm": params.num_perm, "ngram": params.ngram,
            "threshold": params.threshold, "verify_threshold": params.min_similarity or None,
            "max_cluster": params.max_cluster, **found, "seconds": seconds}


# ---------------------------------------------------------------- DataFrames in and out

def _check_columns(frame: Any, text_column: str, id_column: str) -> None:
    missing = [c for c in (text_column, id_column) if c not in frame.columns]
    if missing:
        raise FilterError(f"dedup: input has no column {missing[0]!r} (columns: {list(frame.columns)})")


def _id_type(meta: pd.DataFrame, id_column: str) -> pa.DataType:
    kind = meta[id_column].dtype
    if pd.api.types.is_integer_dtype(kind):
        return pa.int64()
    if pd.api.types.is_float_dtype(kind):
        return pa.float64()
    return pa.large_string()


def _frame_hashes(part: pd.DataFrame, number: int, text_column: str, id_column: str, score_column: str,
                  id_type: pa.DataType, exact: bool, params: MinHashParams | None, folder: str,
                  reducers: int) -> dict[str, Any]:
    """Partition ``number`` of a DataFrame written to ``folder/docs-NNNNN.arrow`` (the corpus the
    passes read back), then its dedup hashes (``hash_partition``)."""
    texts = arrow_texts(part[text_column]) if len(part) else pa.array([], pa.large_string())
    if texts is None:  # lone surrogates: replaced, as the hashes see them
        texts = pa.array([t.encode("utf-8", "replace").decode("utf-8") if isinstance(t, str) else None
                          for t in part[text_column]], pa.large_string())
    score = part[score_column].astype(float).to_numpy() if score_column in part else np.full(len(part), np.nan)
    docs = pa.table({"text": texts, "id": pa.array(part[id_column].to_numpy(), from_pandas=True).cast(id_type),
                     "length": pc.fill_null(pc.utf8_length(texts), 0).cast(pa.int64()),
                     "score": pa.array(score, pa.float64(), from_pandas=True)})
    written = write_table(docs, block_path(Path(folder), number, "docs"))
    summary = hash_partition(part[text_column], np.arange(len(part)), number, exact, params, folder, reducers)
    summary["files"].append(written)
    return summary


def _work_folder(work_dir: str | Path | None) -> Path:
    if work_dir is not None:
        return Path(tempfile.mkdtemp(prefix="dedup-", dir=work_dir))
    folder = Path(tempfile.mkdtemp(prefix="textbook-dedup-"))
    atexit.register(shutil.rmtree, folder, True)  # the lazy frame reads its decisions until the process ends
    return folder


def dedup_frame(ddf: Any, text_column: str, id_column: str, score_column: str, exact: bool,
                params: MinHashParams | None, work_dir: str | Path | None = None) -> tuple[Path, pa.DataType, Found]:
    """Run the dedup passes over a Dask or pandas DataFrame in a work folder (``work_dir``: a folder
    every worker can read, default a temporary one removed when the process exits); the folder of
    the decisions, the id type and what was found."""
    _check_columns(ddf, text_column, id_column)
    pandas_in = isinstance(ddf, pd.DataFrame)
    parts = [dask.delayed(ddf)] if pandas_in else ddf.to_delayed()
    meta = ddf.iloc[:0] if pandas_in else ddf._meta
    id_type = _id_type(meta, id_column)
    folder = _work_folder(work_dir)
    passes = Passes(folder, {"work": str(folder)})
    reducers = reducers_for(len(parts))
    hashes = str(passes.folder_of("hashes"))
    passes.run("hashes", _frame_hashes, [(p, n, text_column, id_column, score_column, id_type, exact, params,
                                          hashes, reducers) for n, p in enumerate(parts)])
    corpus = Corpus(hashes, id_type, kind="docs", id="id", score="score", length="length")
    clock: dict[str, float] = {}
    found = find_duplicates(passes, corpus, len(parts), reducers, exact, params, clock)
    found.minhash["seconds"] = {k: round(v, 2) for k, v in passes.seconds.items()}
    return found.decisions, id_type, found


def _flag_partition(part: pd.DataFrame, folder: str, id_column: str, id_type: pa.DataType, exact: bool,
                    minhash: bool, partition_info: dict[str, Any] | None = None) -> pd.DataFrame:
    number = partition_info["number"] if partition_info else 0
    decisions = read_decisions(Path(folder), number, id_type)
    return part.assign(**dedup_flags(part[id_column], decisions, exact, minhash))


def _flagged(ddf: Any, folder: Path, id_column: str, id_type: pa.DataType, exact: bool, minhash: bool) -> Any:
    if isinstance(ddf, pd.DataFrame):
        return _flag_partition(ddf, str(folder), id_column, id_type, exact, minhash)
    meta = _flag_partition(ddf._meta, str(folder / "none"), id_column, id_type, exact, minhash)
    return ddf.map_partitions(_flag_partition, str(folder), id_column, id_type, exact, minhash, meta=meta)


def exact_dedup(ddf: Any, text_column: str = "text", id_column: str = "id", score_column: str = "edu_score",
                work_dir: str | Path | None = None) -> Any:
    """``ddf`` plus ``exact_dup`` (True for every copy but the kept one).

    Copies are documents with equal dedup form (case, punctuation and spacing ignored). The kept copy
    is the best by ``score_column`` (if present), then length, then id. Runs the passes now (one
    read of ``ddf``, and of the copies' partitions again); the returned frame is lazy and recomputes
    ``ddf``. A pandas DataFrame in gives a pandas DataFrame out. ``work_dir``: see ``dedup_frame``.
    """
    folder, id_type, _ = dedup_frame(ddf, text_column, id_column, score_column, True, None, work_dir)
    return _flagged(ddf, folder, id_column, id_type, True, False)


def minhash_dedup(ddf: Any, text_column: str = "text", id_column: str = "id",
                  score_column: str = "edu_score", threshold: float = 0.8, num_perm: int = 128,
                  ngram: int = 5, seed: int = 0, bands: int | None = None, rows: int | None = None,
                  verify: bool = True, verify_threshold: float | None = None, max_cluster: int = MAX_CLUSTER,
                  stats: dict[str, Any] | None = None, work_dir: str | Path | None = None) -> Any:
    """``ddf`` plus ``cluster_id``, ``cluster_size`` and ``near_dup`` (True = remove).

    Near-duplicates have word ``ngram``-gram Jaccard similarity of about ``threshold`` or more. LSH
    ``bands`` x ``rows`` are derived from ``threshold`` and ``num_perm`` unless given; with ``verify``,
    a candidate pair counts only if the exact Jaccard of its shingle sets reaches
    ``verify_threshold`` (default ``threshold``), and a cluster member is removed only if it is that
    similar to a kept member (members visited best first, so the best of each cluster is kept); a
    cluster of more than ``max_cluster`` members keeps its best member only.
    ``cluster_id`` is the smallest id of the connected component (a document's own id when alone);
    ``cluster_size`` its size. Ids must be unique.
    ``stats``, if given, receives bands, rows, pair, cluster and removal counts and seconds per pass.
    Runs the passes now (see the module docstring); the returned frame is lazy and recomputes
    ``ddf`` partition by partition. A pandas DataFrame in gives a pandas DataFrame out.
    """
    params = MinHashParams.resolve(threshold, num_perm, ngram, seed, bands, rows, verify, verify_threshold,
                                   max_cluster)
    log.info("minhash: threshold %.2f, %d permutations -> %d bands x %d rows", threshold, num_perm,
             params.bands, params.rows)
    folder, id_type, found = dedup_frame(ddf, text_column, id_column, score_column, False, params, work_dir)
    if stats is not None:
        stats.update(minhash_stats(params, {k: v for k, v in found.minhash.items() if k != "seconds"},
                                   found.minhash.get("seconds", {})))
    return _flagged(ddf, folder, id_column, id_type, False, True)
