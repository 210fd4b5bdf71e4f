"""Exact and MinHash-LSH near-duplicate removal on a Dask DataFrame (or pandas, for notebooks).

Both functions make one eager pass over the input that leaves only a small table (the ids of
duplicates, or of documents in multi-member clusters), then return a lazy frame that recomputes
the input partition by partition and flags rows from that table. No process ever holds the corpus
or the LSH index; what is gathered into one task is that small table, at about 50 bytes per
duplicate (10 M near-duplicates ~ 0.5 GB), which is the documented bound.

MinHash dedup, in the order of the data flow:

1. signatures per partition (``filters.minhash``), written to ``work_dir`` as Parquet;
2. LSH banding: rows ``(band, band_hash, doc)`` shuffled on ``(band, band_hash)``; every document
   of a bucket is linked to the bucket's smallest id (a star, not all pairs);
3. verification: a candidate pair is kept only if its signatures' estimated Jaccard reaches the
   threshold (cuts the false positives of recall-oriented band parameters);
4. connected components by min-label propagation with pointer jumping, a few Dask rounds;
5. members visited best first (highest ``score_column``, then longest text, then smallest id):
   a member is removed if its signature is that similar to a member already kept, else kept; so
   each cluster keeps its best document and every removed one resembles a kept one (no chaining).

``cluster_id`` is the smallest id of a cluster, so results do not depend on partitioning or on
the number of workers.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import xxhash
from distributed import futures_of, wait

from filters.minhash import (
    MAX_NGRAM,
    band_hashes,
    dedup_form,
    estimated_jaccard,
    lsh_params,
    partition_shingles,
    signatures_from_flat,
)
from pipeline.errors import FilterError

log = logging.getLogger(__name__)

# Band parameters weight a missed duplicate 9x a false candidate: candidates are verified on their
# signatures afterwards, so a false candidate costs a comparison while a miss is final.
FALSE_POSITIVE_WEIGHT = 0.1
FALSE_NEGATIVE_WEIGHT = 0.9
MAX_ROUNDS = 64
# Candidate edges are few (duplicates only): partitions this size keep a round's shuffles cheap.
EDGES_PER_PARTITION = 1_000_000


def exact_hashes(texts: Any) -> np.ndarray:
    """uint64 xxh3-64 hashes of the dedup form of ``texts`` (``None`` hashes like ``""``)."""
    return np.fromiter((xxhash.xxh3_64_intdigest(dedup_form(t).encode("utf-8", "surrogatepass"))
                        for t in texts), dtype=np.uint64)


def keep_best(members: pd.DataFrame, group: str, doc: str = "doc", score: str = "score",
              length: str = "length") -> pd.Series:
    """True for the one member of each ``group`` to keep: highest score, then longest, then min id.

    Missing scores rank below every score.
    """
    ranked = pd.DataFrame({"group": members[group].to_numpy(), "doc": members[doc].to_numpy(),
                           "score": members[score].astype(float).fillna(-np.inf).to_numpy(),
                           "length": members[length].to_numpy()})
    ordered = ranked.sort_values(["score", "length", "doc"], ascending=[False, False, True], kind="stable")
    best = ~ordered["group"].duplicated()
    return pd.Series(best.sort_index().to_numpy(), index=members.index)  # positional: the index may repeat


def _doc_table(part: pd.DataFrame, text_column: str, id_column: str, score_column: str) -> pd.DataFrame:
    """``doc``, ``length``, ``score`` of a partition: what the keep rule needs."""
    texts = part[text_column]
    score = part[score_column].astype(float) if score_column in part else np.nan
    return pd.DataFrame({"doc": part[id_column],
                         "length": texts.map(lambda t: len(t) if isinstance(t, str) else 0).astype(np.int64),
                         "score": score}, index=part.index).reset_index(drop=True)


@contextmanager
def _timed(clock: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    clock[name] = time.perf_counter() - start


def _check_columns(frame: Any, text_column: str, id_column: str) -> None:
    missing = [c for c in (text_column, id_column) if c not in frame.columns]
    if missing:
        raise FilterError(f"dedup: input has no column {missing[0]!r} (columns: {list(frame.columns)})")


def _gather(frame: dd.DataFrame) -> Any:
    """One persisted pandas DataFrame from a (small) Dask frame: the documented bounded table."""
    (table,) = dask.persist(dask.delayed(pd.concat)(frame.to_delayed(), ignore_index=True))
    futures = futures_of(table)
    if futures:  # a distributed persist is asynchronous, and its inputs may be deleted next
        wait(futures)
    return table


# ---------------------------------------------------------------- exact dedup

def _exact_members(part: pd.DataFrame, text_column: str, id_column: str, score_column: str) -> pd.DataFrame:
    table = _doc_table(part, text_column, id_column, score_column)
    return table.assign(exact_hash=exact_hashes(part[text_column]))


def _exact_losers(part: pd.DataFrame) -> pd.DataFrame:
    copies = part[part["exact_hash"].duplicated(keep=False)]
    return copies.loc[~keep_best(copies, "exact_hash"), ["doc"]]


def _flag_exact(part: pd.DataFrame, losers: pd.DataFrame, text_column: str, id_column: str) -> pd.DataFrame:
    return part.assign(exact_hash=exact_hashes(part[text_column]),
                       exact_dup=part[id_column].isin(losers["doc"]).to_numpy())


def exact_dedup(ddf: dd.DataFrame, text_column: str = "text", id_column: str = "id",
                score_column: str = "edu_score") -> dd.DataFrame:
    """``ddf`` plus ``exact_hash`` (uint64) and ``exact_dup`` (True for every copy but the kept one).

    Copies are documents with equal dedup form (case, punctuation and spacing ignored). The kept copy
    is the best by ``score_column`` (if present), then length, then id. Computes one pass over
    ``ddf`` now (hashes only); the returned frame is lazy and recomputes ``ddf``.
    """
    if isinstance(ddf, pd.DataFrame):
        return exact_dedup(dd.from_pandas(ddf, npartitions=1), text_column, id_column,
                           score_column).compute()
    _check_columns(ddf, text_column, id_column)
    members = ddf.map_partitions(_exact_members, text_column, id_column, score_column,
                                 meta=_exact_members(ddf._meta, text_column, id_column, score_column))
    losers = members.shuffle(on="exact_hash").map_partitions(
        _exact_losers, meta=members._meta[["doc"]])
    table = _gather(losers)
    meta = _flag_exact(ddf._meta, members._meta[["doc"]], text_column, id_column)
    return ddf.map_partitions(_flag_exact, table, text_column, id_column, meta=meta)


# ---------------------------------------------------------------- MinHash dedup

def _sig_columns(num_perm: int) -> list[str]:
    return [f"s{i:03d}" for i in range(num_perm)]


def _signature_table(part: pd.DataFrame, text_column: str, id_column: str, score_column: str,
                     num_perm: int, ngram: int, seed: int) -> pd.DataFrame:
    """``doc``, ``length``, ``score``, ``shingles`` and one uint32 column per signature slot."""
    table = _doc_table(part, text_column, id_column, score_column)
    flat, sizes = partition_shingles(part[text_column], ngram)
    sig = signatures_from_flat(flat, sizes, num_perm, seed)
    slots = pd.DataFrame(sig, columns=_sig_columns(num_perm), index=table.index)
    return pd.concat([table.assign(shingles=sizes.astype(np.int64)), slots], axis=1)


def _band_rows(sigs: pd.DataFrame, bands: int, rows: int, num_perm: int) -> pd.DataFrame:
    """One row per (document, band): documents without shingles are in no bucket."""
    sigs = sigs[sigs["shingles"] > 0]
    hashes = band_hashes(sigs[_sig_columns(num_perm)].to_numpy(), bands, rows)
    return pd.DataFrame({"band": np.tile(np.arange(bands, dtype=np.int16), len(sigs)),
                         "band_hash": hashes.ravel(),
                         "doc": sigs["doc"].repeat(bands).reset_index(drop=True)})


def _bucket_edges(part: pd.DataFrame) -> pd.DataFrame:
    """Edges ``(src, dst)`` from every bucket member to the bucket's smallest id."""
    smallest = part.groupby(["band", "band_hash"])["doc"].transform("min")
    linked = part["doc"] != smallest
    return pd.DataFrame({"src": part["doc"][linked].reset_index(drop=True),
                         "dst": smallest[linked].reset_index(drop=True)}).drop_duplicates()


def _verified(edges: pd.DataFrame, threshold: float, num_perm: int) -> pd.DataFrame:
    cols = _sig_columns(num_perm)
    similar = estimated_jaccard(edges[[f"{c}_src" for c in cols]].to_numpy(),
                                edges[[f"{c}_dst" for c in cols]].to_numpy()) >= threshold
    return edges.loc[similar, ["src", "dst"]]


def _select(part: pd.DataFrame, ids: pd.DataFrame) -> pd.DataFrame:
    return part[part["doc"].isin(ids["doc"])]


def _verify(edges: dd.DataFrame, involved: dd.DataFrame, threshold: float, num_perm: int) -> dd.DataFrame:
    """The candidate pairs whose signatures agree on at least ``threshold`` of their slots."""
    cols = _sig_columns(num_perm)
    side = involved[["doc", *cols]]
    pairs = edges.merge(side.rename(columns={"doc": "src", **{c: f"{c}_src" for c in cols}}), on="src") \
                 .merge(side.rename(columns={"doc": "dst", **{c: f"{c}_dst" for c in cols}}), on="dst")
    return pairs.map_partitions(_verified, threshold, num_perm, meta=pairs._meta[["src", "dst"]])


def _smaller(a: pd.Series, b: pd.Series) -> pd.Series:
    return a.where(a <= b, b)  # works for string ids too, unlike np.minimum


def connected_components(edges: dd.DataFrame, max_rounds: int = MAX_ROUNDS,
                         edges_per_partition: int = EDGES_PER_PARTITION) -> tuple[dd.DataFrame, int]:
    """``(node, label)`` for every node of ``edges`` (``src``, ``dst``): label = smallest id of its component.

    Min-label propagation over the edges, then pointer jumping (label <- label of label), until no
    label changes; returns the labels and the number of rounds. Each round is a few Dask merges over
    partitions of ``edges_per_partition`` edges (few edges: one partition, no shuffle overhead).
    """
    edges = edges.repartition(npartitions=max(1, -(-len(edges) // edges_per_partition))).persist(fuse=False)
    nodes = dd.concat([edges["src"], edges["dst"]]).to_frame("node").drop_duplicates()
    labels = nodes.assign(label=nodes["node"]).persist(fuse=False)
    for rounds in range(1, max_rounds + 1):
        pairs = edges.merge(labels.rename(columns={"node": "src", "label": "l_src"}), on="src") \
                     .merge(labels.rename(columns={"node": "dst", "label": "l_dst"}), on="dst")
        low = _smaller(pairs["l_src"], pairs["l_dst"])
        proposals = dd.concat([labels,
                               pairs[["src"]].rename(columns={"src": "node"}).assign(label=low),
                               pairs[["dst"]].rename(columns={"dst": "node"}).assign(label=low)])
        new = proposals.groupby("node")["label"].min(split_out=labels.npartitions).reset_index()
        jumped = new.merge(new.rename(columns={"node": "label", "label": "label_of_label"}), on="label")
        new = jumped.assign(label=_smaller(jumped["label"], jumped["label_of_label"]))[["node", "label"]]
        new = new.persist(fuse=False)
        compared = new.merge(labels.rename(columns={"label": "old"}), on="node")
        changed = int((compared["label"] != compared["old"]).sum().compute())
        labels = new
        if changed == 0:
            return labels, rounds
    raise FilterError(f"minhash: connected components did not converge in {max_rounds} rounds")


def _resolve_clusters(members: pd.DataFrame, min_similarity: float, num_perm: int) -> pd.DataFrame:
    """Per member of complete clusters: ``cluster_size`` and ``minhash_dup``.

    Members are visited best first (keep rule); one is a duplicate when its signature agrees on at
    least ``min_similarity`` of the slots with a member already kept, else it is kept. So every
    removed document resembles a kept one, and chains (a ~ b ~ c, a !~ c) remove nothing that
    nothing kept resembles. Cost: members x kept members per cluster, for candidate documents only.
    """
    members = members.rename(columns={"label": "cluster_id"}).reset_index(drop=True)
    ranked = pd.DataFrame({"cluster_id": members["cluster_id"], "doc": members["doc"],
                           "score": members["score"].astype(float).fillna(-np.inf),
                           "length": members["length"]})
    order = ranked.sort_values(["cluster_id", "score", "length", "doc"],
                               ascending=[True, False, False, True], kind="stable").index.to_numpy()
    sig = members[_sig_columns(num_perm)].to_numpy()
    cluster = members["cluster_id"].to_numpy()
    dup = np.zeros(len(members), dtype=bool)
    kept: list[int] = []
    for k, row in enumerate(order):
        if k == 0 or cluster[row] != cluster[order[k - 1]]:
            kept = [row]  # the best member of a new cluster
        elif estimated_jaccard(sig[kept], sig[row]).max() >= min_similarity:
            dup[row] = True
        else:
            kept.append(row)
    return pd.DataFrame({"doc": members["doc"],
                         "cluster_id": members["cluster_id"],
                         "cluster_size": members.groupby("cluster_id")["doc"].transform("size").astype(np.int64),
                         "minhash_dup": dup})


def _flag_near(part: pd.DataFrame, clusters: pd.DataFrame, id_column: str) -> pd.DataFrame:
    found = clusters.set_index("doc").reindex(part[id_column].to_numpy())
    in_cluster = found["cluster_size"].notna().to_numpy()
    cluster_id = part[id_column].where(~in_cluster, found["cluster_id"].to_numpy())
    return part.assign(cluster_id=cluster_id,
                       cluster_size=found["cluster_size"].fillna(1).astype(np.int64).to_numpy(),
                       minhash_dup=found["minhash_dup"].fillna(False).astype(bool).to_numpy())


def minhash_dedup(ddf: dd.DataFrame, text_column: str = "text", id_column: str = "id",
                  score_column: str = "edu_score", threshold: float = 0.8, num_perm: int = 128,
                  ngram: int = 5, seed: int = 0, bands: int | None = None, rows: int | None = None,
                  verify: bool = True, verify_threshold: float | None = None,
                  work_dir: str | Path | None = None,
                  stats: dict[str, Any] | None = None) -> dd.DataFrame:
    """``ddf`` plus ``cluster_id``, ``cluster_size`` and ``minhash_dup`` (True = remove).

    Near-duplicates have word ``ngram``-gram Jaccard similarity of about ``threshold`` or more. LSH
    ``bands`` x ``rows`` are derived from ``threshold`` and ``num_perm`` unless given; with ``verify``,
    a candidate pair counts only if its estimated Jaccard reaches ``verify_threshold`` (default
    ``threshold``), and a cluster member is removed only if it is that similar to a kept member
    (members visited best first, so the best of each cluster is always kept).
    ``cluster_id`` is the smallest id of the connected component (a document's own id when alone);
    ``cluster_size`` its size. Ids must be unique. Signatures go to Parquet under ``work_dir`` (a
    temp dir if None; it must be visible to every worker), deleted before returning.
    ``stats``, if given, receives bands, rows, pair, cluster and removal counts and phase seconds.
    Computes the signatures pass and the clustering now; the returned frame is lazy and recomputes
    ``ddf`` partition by partition. A pandas DataFrame in gives a pandas DataFrame out.
    """
    if isinstance(ddf, pd.DataFrame):
        return minhash_dedup(dd.from_pandas(ddf, npartitions=1), text_column, id_column, score_column,
                             threshold, num_perm, ngram, seed, bands, rows, verify, verify_threshold,
                             work_dir, stats).compute()
    _check_columns(ddf, text_column, id_column)
    if bands is None or rows is None:
        bands, rows = lsh_params(threshold, num_perm, FALSE_POSITIVE_WEIGHT, FALSE_NEGATIVE_WEIGHT)
    if not 1 <= ngram <= MAX_NGRAM:
        raise FilterError(f"filter.minhash.ngram: must be between 1 and {MAX_NGRAM}, got {ngram}")
    if bands * rows > num_perm:
        raise FilterError(f"filter.minhash: bands * rows = {bands * rows} exceeds num_perm = {num_perm}")
    log.info("minhash: threshold %.2f, %d permutations -> %d bands x %d rows", threshold, num_perm,
             bands, rows)
    own_dir = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="minhash-") if own_dir else work_dir)
    clock: dict[str, float] = {}
    try:
        with _timed(clock, "signatures"):
            args = (text_column, id_column, score_column, num_perm, ngram, seed)
            ddf.map_partitions(_signature_table, *args, meta=_signature_table(ddf._meta, *args)) \
                .to_parquet(root / "signatures", write_index=False, overwrite=True)
            sigs = dd.read_parquet(root / "signatures")
        with _timed(clock, "banding"):
            band_rows = sigs.map_partitions(_band_rows, bands, rows, num_perm,
                                            meta=_band_rows(sigs._meta, bands, rows, num_perm))
            edges = band_rows.shuffle(on=["band", "band_hash"]).map_partitions(
                _bucket_edges, meta=_bucket_edges(band_rows._meta)).drop_duplicates().persist()
            candidates = len(edges)
            # Only documents in a candidate pair matter from here on: select their signature rows
            # once (a broadcast id list, bounded like the result table) instead of shuffling all.
            ids = _gather(dd.concat([edges["src"], edges["dst"]]).to_frame("doc").drop_duplicates())
            involved = sigs.map_partitions(_select, ids, meta=sigs._meta).persist()
        with _timed(clock, "verification"):
            min_similarity = (verify_threshold or threshold) if verify else 0.0
            if verify and candidates:
                edges = _verify(edges, involved, min_similarity, num_perm).persist()
            verified = len(edges) if candidates else 0
        with _timed(clock, "components"):
            labels, rounds = connected_components(edges) if verified else (None, 0)
            members = involved.drop(columns="shingles")
            if labels is None:
                members = members.assign(label=members["doc"])  # no verified pair: all singletons
            else:
                members = labels.merge(members.rename(columns={"doc": "node"}), on="node") \
                                .rename(columns={"node": "doc"})
            clusters = members.shuffle(on="label").map_partitions(
                _resolve_clusters, min_similarity, num_perm,
                meta=_resolve_clusters(members._meta, min_similarity, num_perm))
            table = _gather(clusters)
        if stats is not None:
            summary = dask.compute(table)[0]
            stats.update(bands=bands, rows=rows, num_perm=num_perm, ngram=ngram, threshold=threshold,
                         candidate_pairs=candidates, verified_pairs=verified, rounds=rounds,
                         clusters=int(summary["cluster_id"].nunique()), clustered_docs=len(summary),
                         removed=int(summary["minhash_dup"].sum()),
                         seconds={k: round(v, 2) for k, v in clock.items()})
    finally:
        shutil.rmtree(root if own_dir else root / "signatures", ignore_errors=True)
    meta = _flag_near(ddf._meta, _resolve_clusters(sigs._meta.assign(label=sigs._meta["doc"]), 0, num_perm),
                      id_column)
    return ddf.map_partitions(_flag_near, table, id_column, meta=meta)
