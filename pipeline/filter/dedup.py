"""Exact and MinHash-LSH near-duplicate removal over partitions of a corpus: the corpus-wide passes;
the in-memory parts (hashes, keep order, Jaccard, components) are ``filters.minhash``.

A corpus is a list of ``dask.delayed`` pandas partitions that can be recomputed (read again) in
the same row order. Per partition, ``exact_members`` and ``bucket_rows`` are the hashes each dedup
needs (the filter stage computes both in one task, from one read of the text); ``exact_reducers``
and ``near_duplicates`` turn them into a small table (the copies to remove; the members of
multi-member clusters) and ``flag_exact`` / ``flag_near`` flag a partition's rows from it. No
process ever holds the corpus or the LSH index. ``exact_dedup`` and ``minhash_dedup`` wrap this
for a Dask DataFrame (lazy frame out) or a pandas one (pandas out), for notebooks and scripts.

MinHash dedup, in the order of the data flow (two passes over the input, whatever its size):

1. per partition: word n-gram shingles, signatures and LSH band hashes (``filters.minhash``),
   as integer rows ``(bucket, key)``: bucket = one uint64 naming (band, band hash), key = partition
   number and row (ids, often strings, stay out of the shuffle); signatures are never stored;
2. LSH banding: those rows shuffled on ``bucket`` (``pipeline.filter.shuffle``; one 16-byte row per
   document and band); only the rows of buckets with two or more members are gathered (a few,
   whatever the corpus);
3. verification: a second pass takes the ids and shingles of those candidate rows, positionally
   (only partitions holding a candidate are read again); every document of a bucket is linked to
   the bucket's smallest id (a star, not all pairs), and a candidate pair is kept only if the exact
   Jaccard of its shingle sets reaches the threshold (no estimate noise at the threshold:
   recall-oriented band parameters then cost comparisons, not precision);
4. connected components of the verified pairs (in the process that clusters);
5. members visited best first (highest ``score_column``, then longest text, then smallest id):
   a member is removed if it is that similar to a member already kept, else kept; so each cluster
   keeps its best document and every removed one resembles a kept one (no chaining).

What one process holds is bounded by the duplicates, not the corpus: the rows of shared buckets
(18 bytes each), the candidate edges (~50 bytes each) and the distinct shingles of candidate
documents (4 bytes per word). Both passes must see the same rows in the same order per partition
(any deterministic input: Parquet, JSONL, a pandas frame).

``cluster_id`` is the smallest id of a cluster, so results do not depend on partitioning or on
the number of workers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import pandas as pd
from dask.delayed import Delayed

from filters.minhash import (
    MAX_NGRAM,
    band_hashes,
    best_first,
    connected_components,
    exact_hashes,
    jaccard,
    keep_best,
    lsh_buckets,
    lsh_params,
    partition_shingles,
    signatures_from_flat,
)
from pipeline.errors import FilterError
from pipeline.filter.shuffle import shuffle_reduce
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

_ROW_BITS = 32  # a document's key: partition number << _ROW_BITS | row in the partition


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

    @classmethod
    def resolve(cls, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 0,
                bands: int | None = None, rows: int | None = None, verify: bool = True,
                verify_threshold: float | None = None) -> MinHashParams:
        """Derive ``bands`` x ``rows`` from ``threshold`` unless given; FilterError on a bad value."""
        if bands is None or rows is None:
            bands, rows = lsh_params(threshold, num_perm, FALSE_POSITIVE_WEIGHT, FALSE_NEGATIVE_WEIGHT)
        if not 1 <= ngram <= MAX_NGRAM:
            raise FilterError(f"filter.minhash.ngram: must be between 1 and {MAX_NGRAM}, got {ngram}")
        if bands * rows > num_perm:
            raise FilterError(f"filter.minhash: bands * rows = {bands * rows} exceeds num_perm = {num_perm}")
        min_similarity = (threshold if verify_threshold is None else verify_threshold) if verify else 0.0
        return cls(threshold, num_perm, ngram, seed, bands, rows, min_similarity)


def _doc_table(part: pd.DataFrame, text_column: str, id_column: str, score_column: str) -> pd.DataFrame:
    """``doc``, ``length``, ``score`` of a partition: what the keep rule needs."""
    texts = part[text_column]
    score = part[score_column].astype(float) if score_column in part else np.nan
    if isinstance(texts.dtype, pd.StringDtype):  # Arrow strings: counted in Arrow, no Python string each
        length = texts.str.len().fillna(0).astype(np.int64)
    else:
        length = texts.map(lambda t: len(t) if isinstance(t, str) else 0).astype(np.int64)
    return pd.DataFrame({"doc": part[id_column], "length": length,
                         "score": score}, index=part.index).reset_index(drop=True)


def _check_columns(frame: Any, text_column: str, id_column: str) -> None:
    missing = [c for c in (text_column, id_column) if c not in frame.columns]
    if missing:
        raise FilterError(f"dedup: input has no column {missing[0]!r} (columns: {list(frame.columns)})")


def _keys(number: int, rows: np.ndarray) -> np.ndarray:
    return (np.int64(number) << np.int64(_ROW_BITS)) | np.asarray(rows, dtype=np.int64)


def concat_tables(frames: Sequence[pd.DataFrame], meta: pd.DataFrame) -> pd.DataFrame:
    """The reducers' small tables as one (``meta``: an empty one, for no reducers at all)."""
    return pd.concat([meta, *frames], ignore_index=True) if frames else meta


# ---------------------------------------------------------------- exact dedup

def exact_members(part: pd.DataFrame, number: int, text_column: str = "text", id_column: str = "id",
                  score_column: str = "edu_score", hashes: np.ndarray | None = None) -> pd.DataFrame:
    """``key``, ``doc``, ``length``, ``score`` and ``exact_hash`` of every row of partition ``number``
    (``hashes``: its ``exact_hashes`` when already computed)."""
    table = _doc_table(part, text_column, id_column, score_column)
    table.insert(0, "key", _keys(number, np.arange(len(part))))
    return table.assign(exact_hash=exact_hashes(part[text_column]) if hashes is None else hashes)


def _exact_losers(part: pd.DataFrame) -> pd.DataFrame:
    copies = part[part["exact_hash"].duplicated(keep=False)]
    return copies.loc[~keep_best(copies, "exact_hash"), ["key", "doc"]]


def exact_reducers(members: Sequence[Delayed], meta: pd.DataFrame) -> list[Delayed]:
    """Lazy ``key``, ``doc`` tables of every copy but the kept one, one per reducer, from the
    ``exact_members`` of each partition (``meta``: an empty one); as small as the duplicates."""
    return shuffle_reduce(members, "exact_hash", _exact_losers, meta=meta[["key", "doc"]], rows_meta=meta)


def exact_flags(ids: pd.Series, losers: pd.DataFrame) -> np.ndarray:
    """``exact_dup`` of each document of ``ids``: its id is among the ``losers``' docs."""
    return ids.isin(losers["doc"]).to_numpy()


def flag_exact(part: pd.DataFrame, losers: pd.DataFrame, id_column: str = "id") -> pd.DataFrame:
    """``part`` plus ``exact_dup`` (``exact_flags``)."""
    return part.assign(**{EXACT_DUP: exact_flags(part[id_column], losers)})


def exact_dedup(ddf: Any, text_column: str = "text", id_column: str = "id",
                score_column: str = "edu_score") -> Any:
    """``ddf`` plus ``exact_dup`` (True for every copy but the kept one).

    Copies are documents with equal dedup form (case, punctuation and spacing ignored). The kept copy
    is the best by ``score_column`` (if present), then length, then id. Computes one pass over
    ``ddf`` now (hashes only); the returned frame is lazy and recomputes ``ddf``. A pandas
    DataFrame in gives a pandas DataFrame out.
    """
    _check_columns(ddf, text_column, id_column)
    pandas_in = isinstance(ddf, pd.DataFrame)
    parts = [dask.delayed(ddf)] if pandas_in else ddf.to_delayed()
    meta = exact_members(ddf.iloc[:0] if pandas_in else ddf._meta, 0, text_column, id_column, score_column)
    members = [dask.delayed(exact_members, pure=True)(p, n, text_column, id_column, score_column)
               for n, p in enumerate(parts)]
    losers = concat_tables(dask.compute(*exact_reducers(members, meta)), meta[["key", "doc"]])
    if pandas_in:
        return flag_exact(ddf, losers, id_column)
    return ddf.map_partitions(flag_exact, dask.delayed(losers), id_column,
                              meta=flag_exact(ddf._meta, losers.iloc[:0], id_column))


# ---------------------------------------------------------------- MinHash dedup

def _bucket_meta() -> pd.DataFrame:
    return pd.DataFrame({"bucket": pd.Series(dtype=np.uint64), "key": pd.Series(dtype=np.int64)})


def bucket_rows(part: pd.DataFrame, number: int, params: MinHashParams, text_column: str = "text",
                shingles: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per (document with shingles, band) of partition ``number``: its LSH ``bucket`` and its
    ``key`` (``shingles``: its ``partition_shingles`` when already computed). Integer keys, not ids,
    travel through the shuffle (ids are joined back for candidates only).
    """
    flat, sizes = partition_shingles(part[text_column], params.ngram) if shingles is None else shingles
    has = np.flatnonzero(sizes > 0)
    signatures = signatures_from_flat(flat, sizes, params.num_perm, params.seed)[has]
    buckets = lsh_buckets(band_hashes(signatures, params.bands, params.rows))
    return pd.DataFrame({"bucket": buckets.ravel(), "key": _keys(number, has).repeat(params.bands)})


def _shared_buckets(part: pd.DataFrame) -> pd.DataFrame:
    """The rows of buckets with two or more members (a few; all other buckets link nothing)."""
    return part[part.duplicated("bucket", keep=False)]


def banding_reducers(buckets: Sequence[Delayed]) -> list[Delayed]:
    """LSH banding, lazy: the ``bucket_rows`` of each partition grouped by bucket, one table of the
    shared buckets' rows per reducer (``banded_table`` joins them)."""
    return shuffle_reduce(buckets, "bucket", _shared_buckets, meta=_bucket_meta(), rows_meta=_bucket_meta())


def banded_table(reduced: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The computed ``banding_reducers`` as one table of ``bucket``, ``key``."""
    return concat_tables(reduced, _bucket_meta())


def _bucket_edges(part: pd.DataFrame) -> pd.DataFrame:
    """Edges ``(src, dst)`` from every bucket member (``doc``) to the bucket's smallest id."""
    smallest = part.groupby("bucket")["doc"].transform("min")
    linked = part["doc"] != smallest
    return pd.DataFrame({"src": part["doc"][linked].reset_index(drop=True),
                         "dst": smallest[linked].reset_index(drop=True)}).drop_duplicates(ignore_index=True)


def _members(part: pd.DataFrame, keys: np.ndarray, text_column: str, id_column: str, score_column: str,
             ngram: int) -> pd.DataFrame:
    """``key``, ``doc``, ``length``, ``score`` and ``shingles`` (sorted distinct hashes) of the rows of
    ``part`` with these ``keys`` (all of one partition): shingled again, for these few documents only."""
    part = part.iloc[keys & ((1 << _ROW_BITS) - 1)]
    table = _doc_table(part, text_column, id_column, score_column)
    flat, sizes = partition_shingles(part[text_column], ngram)
    # one sort for all documents, not one np.unique each: (document, shingle) pairs, distinct
    pairs = np.sort((np.repeat(np.arange(len(part), dtype=np.uint64), sizes) << np.uint64(32)) | flat)
    pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))] if len(pairs) else pairs
    cuts = np.searchsorted(pairs >> np.uint64(32), np.arange(1, len(part), dtype=np.uint64))
    table["shingles"] = np.split((pairs & np.uint64(0xFFFFFFFF)).astype(np.uint32), cuts) if len(part) else []
    table.insert(0, "key", keys)
    return table


def _resolve_clusters(members: pd.DataFrame, min_similarity: float) -> pd.DataFrame:
    """Per member of the clusters: ``cluster_id``, ``cluster_size`` and ``near_dup``.

    Members are visited best first (keep rule); one is a duplicate when its exact shingle Jaccard
    with a member already kept reaches ``min_similarity``, else it is kept. So every removed
    document resembles a kept one, and chains (a ~ b ~ c, a !~ c) remove nothing that nothing kept
    resembles. Cost: members x kept members per cluster, for candidate documents only.
    """
    members = members.rename(columns={"label": "cluster_id"}).reset_index(drop=True)
    order = best_first(members, "cluster_id")
    shingles = members["shingles"].to_numpy()
    cluster = members["cluster_id"].to_numpy()
    dup = np.zeros(len(members), dtype=bool)
    kept: list[int] = []
    for k, row in enumerate(order):
        if k == 0 or cluster[row] != cluster[order[k - 1]]:
            kept = [row]  # the best member of a new cluster
        elif min_similarity <= 0 or any(jaccard(shingles[j], shingles[row]) >= min_similarity for j in kept):
            dup[row] = True
        else:
            kept.append(row)
    return pd.DataFrame({"doc": members["doc"],
                         "cluster_id": members["cluster_id"],
                         "cluster_size": members.groupby("cluster_id")["doc"].transform("size").astype(np.int64),
                         NEAR_DUP: dup})


def _cluster(edges: pd.DataFrame, members: pd.DataFrame, min_similarity: float) -> tuple[pd.DataFrame, int]:
    """Verify candidate ``edges`` on exact Jaccard, then cluster: the table ``flag_near`` reads, and
    the number of verified edges."""
    members = members.set_index("doc", drop=False)
    if min_similarity > 0:
        a = members["shingles"].reindex(edges["src"]).to_numpy()
        b = members["shingles"].reindex(edges["dst"]).to_numpy()
        edges = edges[np.fromiter(map(jaccard, a, b), dtype=float, count=len(edges)) >= min_similarity]
    if edges.empty:
        return no_clusters(members["doc"]), 0
    labels = connected_components(edges).rename(columns={"node": "doc"})
    clustered = members.reset_index(drop=True).merge(labels, on="doc")
    return _resolve_clusters(clustered, min_similarity), len(edges)


def no_clusters(ids: pd.Series) -> pd.DataFrame:
    """The cluster table when no pair is a near-duplicate (ids: any series of the id type)."""
    empty = ids.iloc[:0].reset_index(drop=True)
    return pd.DataFrame({"doc": empty, "cluster_id": empty, "cluster_size": pd.Series(dtype=np.int64),
                         NEAR_DUP: pd.Series(dtype=bool)})


def near_flags(ids: pd.Series, clusters: pd.DataFrame) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """``cluster_id``, ``cluster_size`` and ``near_dup`` of each document of ``ids`` from the cluster
    table; a document in no cluster is its own cluster of one. Positions in numpy, not a join: this
    runs for every partition when the outputs are written."""
    at = pd.Index(clusters["doc"]).get_indexer(ids)
    found = at >= 0
    at = at[found]
    cluster_id = np.empty(len(ids), dtype=object)
    cluster_id[found] = clusters["cluster_id"].to_numpy(dtype=object)[at]
    size = np.ones(len(ids), dtype=np.int64)
    size[found] = clusters["cluster_size"].to_numpy(dtype=np.int64)[at]
    near = np.zeros(len(ids), dtype=bool)
    near[found] = clusters[NEAR_DUP].to_numpy(dtype=bool)[at]
    return ids.where(~found, cluster_id), size, near


def flag_near(part: pd.DataFrame, clusters: pd.DataFrame, id_column: str = "id") -> pd.DataFrame:
    """``part`` plus ``cluster_id``, ``cluster_size`` and ``near_dup`` (``near_flags``)."""
    cluster_id, size, near = near_flags(part[id_column], clusters)
    return part.assign(**{"cluster_id": cluster_id, "cluster_size": size, NEAR_DUP: near})


def near_duplicates(shared: pd.DataFrame, parts: Sequence[Delayed], params: MinHashParams, ids: pd.Series,
                    text_column: str = "text", id_column: str = "id", score_column: str = "edu_score",
                    exclude: np.ndarray | None = None, stats: dict[str, Any] | None = None) -> pd.DataFrame:
    """The cluster table (``doc``, ``cluster_id``, ``cluster_size``, ``near_dup``) of the partitions
    ``parts``, from their ``banded_table`` (``shared``, keys numbered like ``parts``).

    Documents whose key is in ``exclude`` (the copies exact dedup removes) take no part. The
    candidate documents are read again (only the partitions holding one), verified and clustered.
    ``ids``: an empty series of the id type. ``stats``, if given, receives the band layout, pair,
    cluster and removal counts and the seconds of this step. Computes now.
    """
    clock: dict[str, float] = {}
    with timed(clock, "verification_and_clusters"):
        if exclude is not None and len(exclude):  # the same as banding without them: drop, then re-share
            shared = _shared_buckets(shared[~np.isin(shared["key"].to_numpy(), exclude)])
        keys = np.unique(shared["key"].to_numpy())
        table, verified, edges = no_clusters(ids), 0, shared.iloc[:0]
        if len(keys):
            cuts = np.searchsorted(keys >> _ROW_BITS, np.arange(len(parts) + 1))
            members = pd.concat(dask.compute(*[
                dask.delayed(_members, pure=True)(parts[n], keys[cuts[n]:cuts[n + 1]], text_column, id_column,
                                                  score_column, params.ngram)
                for n in range(len(parts)) if cuts[n + 1] > cuts[n]]), ignore_index=True)
            doc = members.set_index("key")["doc"].reindex(shared["key"].to_numpy())
            edges = _bucket_edges(shared.assign(doc=doc.array))
            table, verified = _cluster(edges, members.drop(columns="key"), params.min_similarity)
    if stats is not None:
        stats.update(bands=params.bands, rows=params.rows, num_perm=params.num_perm, ngram=params.ngram,
                     threshold=params.threshold, verify_threshold=params.min_similarity or None,
                     candidate_pairs=len(edges), verified_pairs=verified,
                     clusters=int(table["cluster_id"].nunique()), clustered_docs=len(table),
                     removed=int(table[NEAR_DUP].sum()), seconds={k: round(v, 2) for k, v in clock.items()})
    return table


def minhash_dedup(ddf: Any, text_column: str = "text", id_column: str = "id",
                  score_column: str = "edu_score", threshold: float = 0.8, num_perm: int = 128,
                  ngram: int = 5, seed: int = 0, bands: int | None = None, rows: int | None = None,
                  verify: bool = True, verify_threshold: float | None = None,
                  stats: dict[str, Any] | None = None) -> Any:
    """``ddf`` plus ``cluster_id``, ``cluster_size`` and ``near_dup`` (True = remove).

    Near-duplicates have word ``ngram``-gram Jaccard similarity of about ``threshold`` or more. LSH
    ``bands`` x ``rows`` are derived from ``threshold`` and ``num_perm`` unless given; with ``verify``,
    a candidate pair counts only if the exact Jaccard of its shingle sets reaches
    ``verify_threshold`` (default ``threshold``), and a cluster member is removed only if it is that
    similar to a kept member (members visited best first, so the best of each cluster is kept).
    ``cluster_id`` is the smallest id of the connected component (a document's own id when alone);
    ``cluster_size`` its size. Ids must be unique.
    ``stats``, if given, receives bands, rows, pair, cluster and removal counts and phase seconds.
    Computes the banding and the clustering now (two passes over ``ddf``, the second shingling only
    candidate documents again); the returned frame is lazy and recomputes ``ddf`` partition by
    partition. A pandas DataFrame in gives a pandas DataFrame out.
    """
    _check_columns(ddf, text_column, id_column)
    params = MinHashParams.resolve(threshold, num_perm, ngram, seed, bands, rows, verify, verify_threshold)
    log.info("minhash: threshold %.2f, %d permutations -> %d bands x %d rows", threshold, num_perm,
             params.bands, params.rows)
    pandas_in = isinstance(ddf, pd.DataFrame)
    parts = [dask.delayed(ddf)] if pandas_in else ddf.to_delayed()
    meta = ddf.iloc[:0] if pandas_in else ddf._meta
    buckets = [dask.delayed(bucket_rows, pure=True)(p, n, params, text_column) for n, p in enumerate(parts)]
    clock: dict[str, float] = {}
    with timed(clock, "signatures_and_banding"):
        shared = banded_table(dask.compute(*banding_reducers(buckets)))
    table = near_duplicates(shared, parts, params, meta[id_column], text_column, id_column, score_column,
                            stats=stats)
    if stats is not None:
        stats["seconds"] = {"signatures_and_banding": round(clock["signatures_and_banding"], 2), **stats["seconds"]}
    if pandas_in:
        return flag_near(ddf, table, id_column)
    return ddf.map_partitions(flag_near, dask.delayed(table), id_column,
                              meta=flag_near(meta, table.iloc[:0], id_column))
