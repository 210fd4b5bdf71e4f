"""`textbook filter`: web text and generated shards -> clean, deduplicated, decontaminated Parquet.

The flow, as in the data-flow diagram::

    validate inputs -> score shards (normalise, length, heuristics, edu score; resumable)
      -> thresholds -> decontaminate -> exact dedup -> MinHash dedup -> filtered/ + rejected/

Decontamination comes before dedup, so a contaminated copy is never the one a duplicate cluster
keeps; it scans every input document (past the length bounds), so its report counts the hits in
the input, including documents an earlier stage removed.

Scores are stored per shard under ``filtered/scored/`` with a manifest entry (the input's content
digest, how it is read, the score-config hash), so a rerun after a threshold change rescores
nothing and a changed input rescores only its shards. Outputs are staged and renamed into place
(old shards removed first), then ``stats.json``, ``report.png`` and ``manifest.json`` (with the
``lineage`` fingerprint of what made them and the content digest of every shard) are written.

What a run costs beyond its work: a small input, or one whose per-document work all releases the
GIL (dedup only), runs on threads in this process, not on worker processes that start and import
for seconds; local Parquet files are cut into partitions of at most ``filter.partition_mb`` (finer
on a small corpus, so a task holds less) and a multiple of the cluster's threads; the rows
validation decodes are kept (uncompressed, in a temporary folder) for scoring, so a row range
inside a large row group is not decoded again; both dedups hash the text in one pass.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from filters.decontaminate import BenchmarkIndex, Decontaminate
from filters.minhash import signature_scheme
from pipeline.cluster import as_completed, dask_client, local_threads, worker_cached
from pipeline.config import Config, public_dict
from pipeline.errors import DataError, FilterError
from pipeline.filter.benchmarks import load_benchmark
from pipeline.filter.config import BenchmarkConfig, DecontaminateConfig, FilterConfig
from pipeline.filter.dedup import (
    EXACT_DUP,
    NEAR_DUP,
    Corpus,
    MinHashParams,
    decision_schema,
    dedup_flags,
    find_duplicates,
    hash_partition,
    minhash_stats,
    read_decisions,
)
from pipeline.filter.documents import DocumentFilters, percentile_threshold
from pipeline.filter.inputs import Partition, Source, discover, read_partition, text_bytes, validate_input
from pipeline.filter.passes import Passes
from pipeline.filter.plot import plot_report
from pipeline.filter.report import decontamination_report, stage_table
from pipeline.filter.shuffle import read_block, reducer_of, reducers_for, write_blocks
from pipeline.io import (
    build_manifest,
    check_writable,
    list_shards,
    read_json,
    read_parquet,
    shard_path,
    stable_hash,
    write_json,
    write_parquet,
)
from pipeline.lineage import content_digest, file_digests, fingerprint, manifest_ref, relative_name
from pipeline.progress import progress
from pipeline.rundir import (
    EDU_SCORE,
    GENERATED_SOURCE,
    ID,
    REASON,
    SOURCE,
    TEXT,
    RunDir,
    block_path,
    manifest_path,
    shard_entry_path,
)
from pipeline.timing import timed

EDU_BINS = np.linspace(0.0, 1.0, 41)
# Keys of the filter section that shape no output, only how long a run waits: a rerun with another
# value resumes (the natural answer to running out of it)
WAIT_KEYS = ("worker_wait_s",)
# Flags that the kept/rejected split already says; the scores themselves stay as columns.
_DROPPED = (EXACT_DUP, NEAR_DUP)


def run_filter(cfg: Config, scheduler: str | None = None, restart: bool = False, **_: Any) -> int:
    """Run the filter stage of ``cfg``; returns 0. Errors a user can act on raise PipelineError.

    ``restart`` discards the stored scores (``filtered/scored/``) and rebuilds everything.
    """
    fc = cfg.filter
    run = RunDir(cfg.run_dir)
    folder = run.filtered
    check_writable(FilterError, folder)
    filters = DocumentFilters.of(fc, run)
    benchmarks = fc.decontaminate.benchmarks if fc.decontaminate.enabled else []
    index = benchmark_index(benchmarks, fc.decontaminate.ngram, fc.decontaminate.min_ratio) if benchmarks else None
    sources = discover(fc.input, fc.text_column, fc.id_column, cfg.run_dir, fc.include_generated, fc.limit)
    if not sources:
        raise FilterError("filter.input: nothing to filter (no inputs given and no RUN_DIR/generated shards)")
    clock: dict[str, float] = {}
    address = scheduler or cfg.scheduler
    in_process = not address and (fc.in_process if fc.in_process is not None else
                                   _small(sources, fc.in_process_mb) or _releases_gil(filters, index))
    # validation's copies of the rows it decodes: on this machine's disk, for a local cluster only
    with tempfile.TemporaryDirectory(prefix="textbook-filter-") as copies, \
            (local_threads(cfg.workers) if in_process else dask_client(address, cfg.workers)) as client:
        cluster = {"kind": "scheduler" if address else "in-process" if in_process else "processes",
                   "threads": _threads(client)}
        with timed(clock, "validate"):
            rows = partition_rows(sources, fc.partition_rows, cluster["threads"], fc.partition_mb)
            partitions, bad_files, limited = validate_inputs(client, sources, rows, fc.on_bad_file,
                                                             None if address else Path(copies), fc.worker_wait_s)
        lineage = filter_lineage(fc, cfg.run_dir, cfg.seed, partitions, filters, index)
        if restart:  # only once every input has been read and found good
            discard(run)
        with timed(clock, "score"):
            shards = score_shards(client, partitions, filters, run.scored, fc.worker_wait_s)
        output_key = stable_hash({"shards": read_json(manifest_path(run.scored))["shards"],
                                  "lineage": lineage, "run_dir": str(cfg.run_dir)})
        if _up_to_date(run, output_key):
            shutil.rmtree(run.dedup, ignore_errors=True)  # a run stopped between its manifest and this
            print(f"filter: {folder} is up to date (same inputs, scores and config); nothing to do")
            return 0
        passes = Passes(run.dedup, output_key, client, fc.worker_wait_s)
        stats, staged = filter_corpus(passes, shards, filters, fc, run, index, clock)
    stats["cluster"] = cluster
    _record(run, public_dict(cfg), stats, clock, filters, output_key, partitions, lineage, staged, bad_files, limited)
    return 0


def _record(run: RunDir, config: dict[str, Any], stats: dict[str, Any], clock: dict[str, float], filters: DocumentFilters,
            output_key: str, partitions: list[Partition], lineage: dict[str, Any], staged: dict[str, str],
            bad_files: list[dict[str, str]], limited: list[dict[str, Any]]) -> None:
    """Timings and per-stage seconds into ``stats``, then the outputs into place (``finish``)."""
    steps = score_seconds(read_json(manifest_path(run.scored)))
    stats.update(bad_files=bad_files, limited=limited, timings_s={k: round(v, 3) for k, v in clock.items()},
                 score_seconds=steps)
    stage_seconds: dict[str, float] = {"normalize": steps.get("normalize", 0.0), "quality": steps.get("quality", 0.0),
                                       "heuristics": steps.get("segments", 0.0)}  # what the heuristics share
    for f in [*filters.sections, *filters.heuristics]:  # a stage's seconds: those of its filters
        stage_seconds[f.stage] = stage_seconds.get(f.stage, 0) + steps.get(f.name, 0.0)
    stage_seconds.update(clock)
    # the one hashing pass serves both dedups: each gets its own worker seconds of it
    hashing = stats.get("dedup_seconds", {})
    for stage, step in (("exact_dedup", "exact_hashes"), ("minhash", "signatures")):
        if step in hashing:
            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + hashing[step]
    for row in stats["stages"]:  # per-document stages: worker seconds; global stages: wall seconds
        row["seconds"] = round(stage_seconds.get(row["stage"], 0.0), 3)
    finish(run, config, stats, output_key, partitions, lineage, staged)
    shutil.rmtree(run.dedup, ignore_errors=True)  # the passes' files: the outputs are in place


def _releases_gil(filters: DocumentFilters, index: BenchmarkIndex | None) -> bool:
    """Whether all per-document work is Arrow and numpy code that releases the GIL (normalisation,
    length, dedup hashes): then threads share the cores as well as worker processes, without
    their start-up and imports. Heuristics, language, quality and decontamination are Python per
    document."""
    return not filters.filters() and index is None


def _small(sources: list[Source], in_process_mb: float) -> bool:
    """Whether the inputs are local files of ``in_process_mb`` or less in all: then starting worker
    processes (and their imports) would cost more than the work they share."""
    total = 0
    for source in sources:
        path = Path(source.file.path)
        if source.file.on_hub or not path.is_file():
            return False
        total += path.stat().st_size
    return total <= in_process_mb * 1e6


def _threads(client: Any) -> int:
    return sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()) or 1


# A small corpus is cut into at least this many partitions per thread (while they hold at least
# MIN_PARTITION_MB of text each): smaller tasks hold less at once and no thread idles at the end.
# A large corpus takes partitions of up to filter.partition_mb: each partition adds a fixed cost per
# pass (reads, pandas work, and the allocator giving back and faulting in its memory).
MIN_ROUNDS = 6
MIN_PARTITION_MB = 2


def partition_rows(sources: list[Source], most: int, threads: int, most_mb: float = 16) -> int:
    """Rows per partition: ``most`` (``filter.partition_rows``), or fewer, for local Parquet inputs,
    so that a partition holds at most ``most_mb`` MB of text (what a task holds in memory), a
    small corpus gives every thread ``MIN_ROUNDS`` partitions (of ``MIN_PARTITION_MB`` at least),
    and the partitions are a multiple of ``threads`` (every thread of the cluster gets an equal
    share: a 6,000-row file is one task otherwise). Sizes come from the footers; an input of
    another kind, or one whose footer does not read (validation names it), leaves ``most``."""
    rows = size = 0
    for source in sources:
        if source.file.kind != "parquet" or source.file.on_hub:
            return most
        try:
            meta = pq.ParquetFile(source.file.path).metadata
            text = text_bytes(meta, source.text_column)
        except (OSError, ValueError, pa.ArrowException):
            return most
        share = 1.0 if source.limit is None or not meta.num_rows else min(1.0, source.limit / meta.num_rows)
        rows += round(meta.num_rows * share)
        size += text * share
    per_thread = size / 1e6 / threads  # MB of text
    rounds = max(1, math.ceil(per_thread / most_mb), min(MIN_ROUNDS, int(per_thread // MIN_PARTITION_MB)))
    return max(1, min(most, -(-rows // (rounds * threads))))


def discard(run: RunDir) -> None:
    """Forget the stored scores, the dedup passes and the manifest that vouches for the outputs (``--restart``)."""
    manifest_path(run.filtered).unlink(missing_ok=True)
    shutil.rmtree(run.scored, ignore_errors=True)
    shutil.rmtree(run.dedup, ignore_errors=True)


def filter_lineage(fc: FilterConfig, run_dir: Path, seed: int, partitions: list[Partition],
                   filters: DocumentFilters, index: BenchmarkIndex | None) -> dict[str, Any]:
    """What the outputs are made of: the filter section and seed; the content digests of the local
    inputs read (Hub sources by name), the edu model and the benchmark words; the manifests of the
    run's generated shards and classifier when they were used."""
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    inputs: dict[str, str] = {}
    for part in partitions:
        path, on_hub = part.source.file.path, part.source.file.on_hub
        inputs[path if on_hub else relative_name(path, run_dir)] = "hub" if on_hub else part.digest
    parents: dict[str, Any] = {}
    if any(p.source.label == GENERATED_SOURCE for p in partitions):
        parents["generated"] = manifest_ref(manifest_path(run.generated), run_dir)
    if filters.quality:
        model = Path(filters.quality.model)
        inputs[relative_name(model, run_dir)] = filters.quality.model_digest
        from pipeline.classify.train import classifier_parent

        # stops here, before any scoring, when the run's classifier is stale (LineageError)
        parents["classifier"] = classifier_parent(run_dir, model)
    if index is not None:
        inputs["decontaminate.benchmarks"] = index.digest()
    if fc.minhash.enabled:  # the same seed gives other signatures under another rensa algorithm
        inputs["minhash.signatures"] = signature_scheme()
    config = {k: v for k, v in public_dict(fc).items() if k not in WAIT_KEYS}
    return fingerprint({"filter": config, "seed": seed}, inputs,
                       {name: ref for name, ref in parents.items() if ref is not None})


# --- inputs and per-shard scores ---------------------------------------------------------------

def _validate_one(source: Source, partition_rows: int, copies: str | None
                  ) -> tuple[list[Partition], int | None, str | None]:
    try:
        return *validate_input(source, partition_rows, Path(copies) if copies else None), None
    except DataError as e:
        return [], None, str(e)


def _results(client: Any, futures: list[Any], worker_wait_s: float | None) -> list[Any]:
    """The results of ``futures`` in order; with no worker left, as ``as_completed`` says."""
    index = {f: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    for future in as_completed(futures, client, worker_wait_s, "filter.worker_wait_s", "filter"):
        results[index[future]] = future.result()
    return results


def validate_inputs(client: Any, sources: list[Source], partition_rows: int, on_bad_file: str,
                    copies: Path | None = None, worker_wait_s: float | None = None) -> tuple[list[Partition], list[dict[str, str]], list[dict[str, Any]]]:
    """Validate every input on the cluster before any output; stop on a bad file or skip and report it.
    With ``copies`` (a folder), the rows validation decodes are kept there for scoring (``validate_input``).

    Returns the partitions, the skipped files and the inputs ``filter.limit`` cut short (each with
    the documents read and the documents it holds), which are printed as well.
    """
    futures = client.map(_validate_one, sources, partition_rows=partition_rows, copies=copies and str(copies),
                         pure=False)
    results = _results(client, futures, worker_wait_s)
    bad = [{"path": s.file.path, "error": err} for s, (_, _, err) in zip(sources, results, strict=True) if err]
    if bad and on_bad_file == "fail":
        more = f" (and {len(bad) - 1} more bad input(s))" if len(bad) > 1 else ""
        raise DataError(f"{bad[0]['error']}{more}; nothing was written (filter.on_bad_file=skip skips bad files)")
    for b in bad:
        print(f"filter: skipping bad input: {b['error']}")
    limited = []
    for source, (parts, documents, _) in zip(sources, results, strict=True):
        read = sum(p.rows or 0 for p in parts)
        if documents is not None and read < documents:
            limited.append({"path": source.label, "read": read, "documents": documents})
            print(f"filter: read {read:,} of {documents:,} documents of {source.label}: filter.limit")
    partitions = [p for parts, _, _ in results for p in parts]
    if not partitions:
        raise DataError("filter.input: no readable documents in any input")
    if all(p.rows == 0 for p in partitions):  # an empty run would write a "kept 0/0" that looks like success
        raise DataError(f"filter.input: no documents in {', '.join(s.label for s in sources)}: nothing to "
                        "filter (nothing was written)")
    return partitions, bad, limited


def _score_shard(part: Partition, filters: DocumentFilters, path: str, entry: dict[str, Any],
                 entry_path: str) -> tuple[int, dict[str, float]]:
    """Score one partition into ``path``, then write its manifest entry (``entry`` with its rows and
    seconds per scoring step) beside it; returns the rows and seconds."""
    clock: dict[str, float] = {}
    with timed(clock, "read"):
        frame = read_partition(part)
    frame = filters.score(frame, clock)
    with timed(clock, "write"):
        # internal state that the later passes read three times: uncompressed, as that reads and
        # writes cheaper than zstd (the outputs stay zstd)
        write_parquet(frame, Path(path), compression="none")
    seconds = {k: round(v, 3) for k, v in clock.items()}
    write_json({**entry, "rows": len(frame), "seconds": seconds}, Path(entry_path))
    return len(frame), seconds


def score_shards(client: Any, partitions: list[Partition], filters: DocumentFilters, folder: Path,
                 worker_wait_s: float | None = None) -> list[Path]:
    """Score every partition into ``folder/part-*.parquet``; a shard whose manifest entry (input
    digest, score-config hash) matches is done and skipped.

    Each task writes its shard's entry beside it (``part-*.json``); the entries are merged into the
    manifest once, at the end (and, after a run that stopped, at the start), not rewritten per shard.
    """
    manifest_file = manifest_path(folder)
    manifest = read_json(manifest_file) if manifest_file.exists() else {"shards": {}}
    score_hash = stable_hash(filters.score_key())
    paths = [shard_path(folder, i) for i in range(len(partitions))]
    for i, path in enumerate(paths):  # entries of shards a stopped run finished
        entry = shard_entry_path(folder, i)
        if entry.exists():
            try:
                manifest["shards"][path.name] = read_json(entry)
            except ValueError:  # torn: the shard is scored again
                manifest["shards"].pop(path.name, None)
    for stale in list_shards(folder)[len(partitions):]:
        stale.unlink()
        manifest["shards"].pop(stale.name, None)
    entries = {p.name: {"input": part.key, "score_hash": score_hash} for p, part in zip(paths, partitions, strict=True)}
    def done(path: Path) -> bool:
        entry = manifest["shards"].get(path.name, {})
        return path.exists() and {k: entry.get(k) for k in entries[path.name]} == entries[path.name]

    todo = [i for i, p in enumerate(paths) if not done(p)]
    for i in todo:  # forget first: a crash while rewriting must not leave a matching entry
        manifest["shards"].pop(paths[i].name, None)
        shard_entry_path(folder, i).unlink(missing_ok=True)
    manifest["shards"] = {k: v for k, v in manifest["shards"].items() if k in entries}
    if manifest_file.exists():  # a first run has nothing to forget: no files until a shard is done
        write_json(manifest, manifest_file)
    if len(todo) < len(paths):
        print(f"filter: {len(paths) - len(todo)}/{len(paths)} shards already scored, resuming")
    futures = {client.submit(_score_shard, partitions[i], filters, str(paths[i]), entries[paths[i].name],
                             str(shard_entry_path(folder, i)), pure=False): i for i in todo}
    with progress(total=len(todo), desc="filter: score", unit="shard", disable=not todo) as bar:
        for future in as_completed(futures, client, worker_wait_s, "filter.worker_wait_s", "filter"):
            i = futures[future]
            rows, seconds = future.result()
            manifest["shards"][paths[i].name] = {**entries[paths[i].name], "rows": rows, "seconds": seconds}
            bar.update(1)
    if todo or not manifest_file.exists():
        write_json(manifest, manifest_file)
    for i in range(len(paths)):
        shard_entry_path(folder, i).unlink(missing_ok=True)
    return paths


def score_seconds(manifest: dict[str, Any]) -> dict[str, float]:
    """Worker seconds per scoring step (read, normalize, each filter, write), summed over the shards
    of the scored manifest: what the scores cost, whichever run computed them."""
    total: dict[str, float] = {}
    for entry in manifest["shards"].values():
        for step, seconds in entry.get("seconds", {}).items():
            total[step] = round(total.get(step, 0.0) + seconds, 3)
    return total


# --- global stages -----------------------------------------------------------------------------

def benchmark_index(benchmarks: list[BenchmarkConfig], ngram: int, min_ratio: float) -> BenchmarkIndex:
    """The n-gram index of the configured benchmarks, built once per process."""
    key = ("benchmark_index", stable_hash([b.model_dump() for b in benchmarks]), ngram, min_ratio)
    return worker_cached(key, lambda: BenchmarkIndex({b.name: load_benchmark(b) for b in benchmarks},
                                                     ngram, min_ratio))


def _decontamination_hits(part: pd.DataFrame, config: DecontaminateConfig) -> pd.DataFrame:
    """``id``, ``decontam_hits``, ``decontam_matches`` of the documents of ``part`` that hit a benchmark.

    Every document within the length bounds is scanned, also those an earlier stage rejects, so
    the report counts what the input held (a 10 MB page is not scanned for n-grams).
    """
    part = part[~part[REASON].astype(str).str.startswith("length:")]
    if not len(part):
        return _no_hits(part[ID])
    index = benchmark_index(config.benchmarks, config.ngram, config.min_ratio)
    scores = Decontaminate.from_index(index).score(part)
    hit = (scores["decontam_hits"] > 0).to_numpy()
    return pd.DataFrame({ID: part[ID][hit], "decontam_hits": scores["decontam_hits"][hit],
                         "decontam_matches": scores["decontam_matches"][hit]}).reset_index(drop=True)


def _no_hits(ids: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({ID: ids.iloc[:0], "decontam_hits": pd.Series(dtype="int64"),
                         "decontam_matches": pd.Series(dtype=object)}).reset_index(drop=True)


def _flag_decontaminated(part: pd.DataFrame, hits: pd.DataFrame) -> pd.DataFrame:
    """``part`` plus ``decontam_hits`` and ``decontam_matches``; a hit becomes the ``filter_reason``
    of a document no earlier stage rejected."""
    found = hits.set_index(ID).reindex(part[ID].to_numpy())
    scores = pd.DataFrame({"decontam_hits": found["decontam_hits"].fillna(0).astype("int64").to_numpy(),
                           "decontam_matches": found["decontam_matches"].fillna("").astype(object).to_numpy()},
                          index=part.index)
    _, why = Decontaminate().keep(scores)
    reason = part[REASON].where(part[REASON] != "", why)
    return part.join(scores).assign(**{REASON: reason.astype(object)})


def _scores(path: str) -> pd.DataFrame:
    """A scored shard without its text: what thresholds and duplicate-id checks read."""
    columns = [c for c in pq.read_schema(path).names if c != TEXT]
    return read_parquet(Path(path), columns)


_ID_HASHES = pa.schema([("id_hash", pa.uint64())])


def _id_hashes(path: str, number: int, folder: str, reducers: int) -> dict[str, Any]:
    """uint64 hashes of a scored shard's ids, ordered by reducer (a duplicate id across inputs shows as
    a repeated hash in one reducer)."""
    hashes = pd.util.hash_array(read_parquet(Path(path), [ID])[ID].to_numpy(dtype=object), categorize=False)
    table = pa.table([pa.array(hashes, pa.uint64())], schema=_ID_HASHES)
    return {"files": [write_blocks(table, reducer_of(hashes, reducers), reducers, block_path(Path(folder), number))]}


def _repeated_ids(folder: str, partitions: int, reducer: int) -> dict[str, Any]:
    hashes = read_block([block_path(Path(folder), i) for i in range(partitions)], reducer, _ID_HASHES)["id_hash"]
    return {"repeated": len(hashes) - len(np.unique(hashes.to_numpy()))}


def check_ids(passes: Passes, paths: list[str], reducers: int) -> None:
    """FilterError when two documents of the scored shards share an id: their hashes grouped by
    reducer (passes ``ids`` and ``id_check``), only a count per reducer reaches the driver."""
    ids = str(passes.folder_of("ids"))
    passes.run("ids", _id_hashes, [(p, n, ids, reducers) for n, p in enumerate(paths)])
    repeated = sum(s["repeated"] for s in passes.run("id_check", _repeated_ids,
                                                     [(ids, len(paths), j) for j in range(reducers)]))
    if repeated:
        raise FilterError(f"filter.id_column: {repeated} duplicate document ids across inputs; use a "
                          "unique id column, or drop it from the inputs so ids are made from source and row")


def _judged(path: str, filters: DocumentFilters, hits: pd.DataFrame | None) -> pd.DataFrame:
    """A scored shard with its ``filter_reason`` (and the decontamination columns when ``hits`` is given)."""
    part = filters.mark(read_parquet(Path(path)))
    return part if hits is None else _flag_decontaminated(part, hits)


def _alive(judged: pd.DataFrame) -> pd.DataFrame:
    """The documents no per-document stage rejected: what dedup sees, in a fixed row order."""
    alive = judged[REASON].to_numpy() == ""
    return (judged if alive.all() else judged[alive]).drop(columns=[REASON])  # no copy of the text when all are


def _hits_of(path: str, filters: DocumentFilters, config: DecontaminateConfig) -> pd.DataFrame:
    return _decontamination_hits(_judged(path, filters, None), config)


def _dedup_hashes(path: str, number: int, filters: DocumentFilters, hits: pd.DataFrame | None,
                  exact: bool, params: MinHashParams | None, folder: str, reducers: int) -> dict[str, Any]:
    """One read of a shard for both dedups: the exact hashes and the LSH buckets of its alive
    documents, keyed by their rows in the shard (``dedup.hash_partition``)."""
    alive = _alive(_judged(path, filters, hits))
    return hash_partition(alive[TEXT], alive.index.to_numpy(), number, exact, params, folder, reducers)


def _outputs(judged: pd.DataFrame, decisions: pa.Table, exact: bool,
             minhash: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, rejected with ``filter_reason``) of a judged shard, given its dedup decisions.

    Rejected rows come in the order of the stage that rejected them (per-document stages, exact,
    near); each output is one take of the shard's rows (the text is copied once, not per stage).
    The flags are numpy arrays until one ``assign``: a pandas operation has a fixed cost whatever
    its length, and this runs for every partition.
    """
    reason = judged[REASON].to_numpy(dtype=object, copy=True)
    rank = np.where(reason == "", 3, 0)  # 3: kept; else the stage that rejected the row
    flags = dedup_flags(judged[ID], decisions, exact, minhash)
    if exact:
        copy = (rank == 3) & flags[EXACT_DUP]
        reason[copy], rank[copy] = EXACT_DUP, 1
    if minhash:
        before = rank < 3  # rows rejected before near-dedup carry no cluster
        flags["cluster_id"] = flags["cluster_id"].mask(before)
        flags["cluster_size"] = pd.arrays.IntegerArray(flags["cluster_size"], before)
        near = (rank == 3) & flags[NEAR_DUP]
        reason[near], rank[near] = NEAR_DUP, 2
    frame = judged.assign(**flags)
    kept = frame.iloc[np.flatnonzero(rank == 3)].drop(columns=[REASON])
    out = np.flatnonzero(rank < 3)
    out = out[np.argsort(rank[out], kind="stable")]
    return kept, frame.iloc[out].assign(**{REASON: reason[out]}).reset_index(drop=True)


def _write_shard(path: str, number: int, filters: DocumentFilters, hits: pd.DataFrame | None,
                 decisions: str | None, id_type: pa.DataType, exact: bool, minhash: bool, staging: str,
                 schemas: dict[bool, pa.Schema]) -> dict[str, Any]:
    """The kept and rejected outputs of one scored shard, written to staging, from its own dedup
    decisions (``decisions/part-N``) only; their summaries."""
    mine = read_decisions(Path(decisions), number, id_type) if decisions else decision_schema(id_type).empty_table()
    kept, rejected = _outputs(_judged(path, filters, hits), mine, exact, minhash)
    summaries = [_write_part(kept, str(shard_path(Path(staging) / "kept", number)), schemas[False], False),
                 _write_part(rejected, str(shard_path(Path(staging) / "rejected", number)), schemas[True], True)]
    return {"files": [{k: s[k] for k in ("file", "bytes", "digest")} for s in summaries if "file" in s],
            "summaries": summaries}


def filter_corpus(passes: Passes, shards: list[Path], filters: DocumentFilters, fc: FilterConfig, run: RunDir,
                  index: BenchmarkIndex | None, clock: dict[str, float]) -> tuple[dict[str, Any], dict[str, str]]:
    """Thresholds, decontamination, exact dedup and MinHash dedup over the scored shards; write the
    outputs to staging (the ``write`` pass). Returns stats and the content digest of each staged shard.

    Every pass is one task per scored shard or per reducer (``pipeline.filter.passes``) that reads
    files and writes files: no pass holds the corpus, and the driver only per-task summaries. Both
    dedups hash the text in one pass; each write task reads its own shard's decisions only.
    """
    paths = [str(p) for p in shards]
    reducers = reducers_for(len(paths))
    stats: dict[str, Any] = {}
    with timed(clock, "thresholds"):
        check_ids(passes, paths, reducers)
        if filters.quality and fc.quality.keep_top:
            pool = pd.concat(_results(passes.client, passes.client.compute(
                [dask.delayed(filters.quality_pool)(dask.delayed(_scores)(p)) for p in paths]), fc.worker_wait_s))
            threshold = percentile_threshold(pool.to_numpy(), fc.quality.keep_top)
            filters = filters.with_threshold(threshold)
            print(f"filter: keep_top={fc.quality.keep_top} of {len(pool):,} documents -> edu_score >= {threshold:.6g}")
        if filters.quality:
            stats["quality"] = {"threshold": filters.quality.threshold, "keep_top": fc.quality.keep_top}
    shared_filters = dask.delayed(filters, traverse=False)  # one copy per worker, not one per task
    meta = filters.mark(pq.read_schema(paths[0]).empty_table().to_pandas())  # the columns, from the footer alone
    hits = None
    if index is not None:  # before dedup: a contaminated copy must never be the one a cluster keeps
        with timed(clock, "decontaminate"):
            hits = pd.concat(_results(passes.client, passes.client.compute(
                [dask.delayed(_hits_of)(p, shared_filters, fc.decontaminate) for p in paths]), fc.worker_wait_s),
                ignore_index=True)
        meta = _flag_decontaminated(meta, _no_hits(meta[ID]))
    shared_hits = dask.delayed(hits, traverse=False)
    # what the documents dedup sees depends on beyond the scores: the thresholds and the hits
    passes.depend({"quality": filters.quality.threshold if filters.quality else None,
                   "hits": None if hits is None else stable_hash(hits.astype(str).to_dict("list"))})
    exact = fc.exact_dedup.enabled
    params = None
    if fc.minhash.enabled:
        mh = fc.minhash
        params = MinHashParams.resolve(mh.threshold, mh.num_perm, mh.ngram, mh.seed, mh.bands, mh.rows, mh.verify,
                                       mh.verify_threshold, mh.max_cluster)
    id_type = pq.read_schema(paths[0]).field(ID).type
    decisions = None
    dedup_seconds: dict[str, float] = {}
    if exact or params is not None:
        hashes = str(passes.folder_of("hashes"))
        with progress(desc="filter: dedup", unit="task") as bar:
            passes.bar = bar
            with timed(clock, "dedup_hashes"):
                hashed = passes.run("hashes", _dedup_hashes, [(p, n, shared_filters, shared_hits, exact, params,
                                                               hashes, reducers) for n, p in enumerate(paths)],
                                    params={"exact": exact, "minhash": params and vars(params)})
            corpus = Corpus(str(run.scored), id_type, length="n_chars")
            found = find_duplicates(passes, corpus, len(paths), reducers, exact, params, clock)
        for summary in hashed:
            for step, s in summary["seconds"].items():
                dedup_seconds[step] = dedup_seconds.get(step, 0.0) + s
        decisions = str(found.decisions)
        if params is not None:
            print(f"filter: minhash threshold {params.threshold} with {params.num_perm} permutations -> "
                  f"{params.bands} bands x {params.rows} rows")
            seconds = {"signatures": round(dedup_seconds.get("signatures", 0.0), 2),
                       **{k: v for k, v in passes.seconds.items() if k not in ("ids", "id_check", "hashes")}}
            stats["minhash"] = minhash_stats(params, found.minhash, seconds)
    minhash = params is not None
    schemas = _output_schemas(_outputs(meta, decision_schema(id_type).empty_table(), exact, minhash)[0])
    staging = str(passes.folder_of("write"))
    with timed(clock, "write"), progress(total=len(paths), desc="filter: write", unit="shard") as bar:
        passes.bar = bar
        written = passes.run("write", _write_shard, [(p, n, shared_filters, shared_hits, decisions, id_type, exact,
                                                      minhash, staging, schemas) for n, p in enumerate(paths)])
    summaries = [s for w in written for s in w["summaries"]]
    stats.update(_summarise(summaries, index, hits))
    stats["dedup_seconds"] = {k: round(v, 3) for k, v in dedup_seconds.items()}
    # what each pass wrote (its shuffle and state on disk) and its wall seconds, for sizing a cluster
    stats["passes"] = {name: {"bytes": size, "seconds": passes.seconds.get(name)} for name, size in passes.bytes.items()}
    return stats, {s["file"]: s["digest"] for s in summaries if "file" in s}


def _output_schemas(kept_meta: pd.DataFrame) -> dict[bool, pa.Schema]:
    """The Parquet schema of every kept (False) and rejected (True) output, from an empty kept frame:
    one schema for every file, whichever stages left a column empty in one partition."""
    columns = [c for c in kept_meta.columns if c not in _DROPPED]
    kept = kept_meta[columns].astype({c: _output_dtype(kept_meta[c]) for c in columns})
    rejected = kept.assign(**{REASON: pd.Series(dtype="string")})
    return {False: pa.Schema.from_pandas(kept, preserve_index=False),
            True: pa.Schema.from_pandas(rejected, preserve_index=False)}


def _write_part(frame: pd.DataFrame, path: str, schema: pa.Schema, rejected: bool) -> dict[str, Any]:
    """Write one output partition (skipped when empty); return its counts for stats.json."""
    n_bytes = frame["n_bytes"].to_numpy(dtype=np.int64)
    summary: dict[str, Any] = {"rejected": rejected, "docs": len(frame), "bytes": int(n_bytes.sum()),
                               "reasons": {}, "matches": [], "sources": {}}
    edu = frame[EDU_SCORE].to_numpy(dtype=np.float64, na_value=np.nan) if EDU_SCORE in frame else np.empty(0)
    summary["edu_hist"] = np.histogram(edu[~np.isnan(edu)], bins=EDU_BINS)[0].tolist()
    if not len(frame):
        return summary
    if rejected:
        reasons, which = np.unique(frame[REASON].to_numpy(dtype=str), return_inverse=True)
        size = np.zeros(len(reasons), dtype=np.int64)
        np.add.at(size, which, n_bytes)
        summary["reasons"] = {str(r): [int(n), int(b)] for r, n, b in zip(reasons, np.bincount(which), size,
                                                                          strict=True)}
        if "decontam_matches" in frame:
            summary["matches"] = [str(m) for r, m in zip(frame[REASON].tolist(), frame["decontam_matches"].tolist(),
                                                         strict=True) if r.startswith("decontam:")]
    else:
        summary["sources"] = {str(k): int(v) for k, v in frame[SOURCE].value_counts().items()}
    # one conversion, then each column cast to the run's schema (a column absent here is all null)
    table = pa.Table.from_pandas(frame[[c for c in schema.names if c in frame]], preserve_index=False)
    table = pa.Table.from_arrays([table[f.name].cast(f.type) if f.name in table.column_names
                                  else pa.nulls(len(frame), f.type) for f in schema], schema=schema)
    write_parquet(table, Path(path))
    summary.update(file=f"{'rejected' if rejected else 'kept'}/{Path(path).name}", bytes=Path(path).stat().st_size,
                   digest=content_digest(path))
    return summary


def _output_dtype(column: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(column.dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(column.dtype):
        return "Int64"
    if pd.api.types.is_float_dtype(column.dtype):
        return "float64"
    return "string"


def _summarise(summaries: list[dict[str, Any]], index: BenchmarkIndex | None,
               hits: pd.DataFrame | None) -> dict[str, Any]:
    removed: dict[str, list[int]] = {}
    for s in summaries:
        for reason, (docs, size) in s["reasons"].items():
            total = removed.setdefault(reason, [0, 0])
            total[0] += docs
            total[1] += size
    kept = [s for s in summaries if not s["rejected"]]
    docs_in = sum(s["docs"] for s in summaries)
    bytes_in = sum(s["bytes"] for s in summaries)
    sources: dict[str, int] = {}
    for s in kept:
        for k, v in s["sources"].items():
            sources[k] = sources.get(k, 0) + v
    return {
        "documents_in": docs_in, "bytes_in": bytes_in,
        "documents_out": sum(s["docs"] for s in kept), "bytes_out": sum(s["bytes"] for s in kept),
        "kept_by_source": sources,
        "stages": stage_table(docs_in, bytes_in, removed),
        "removed_by_reason": dict(sorted(removed.items(), key=lambda kv: -kv[1][0])),
        "decontamination": decontamination_report(
            hits["decontam_matches"].astype(str).tolist() if hits is not None else [],
            [m for s in summaries for m in s["matches"]], index.items, index.indexed) if index else {},
        "edu_hist": {"bins": EDU_BINS.tolist(),
                     "scored": np.sum([s["edu_hist"] for s in summaries], axis=0).tolist(),
                     "kept": np.sum([s["edu_hist"] for s in kept] or [np.zeros(len(EDU_BINS) - 1)], axis=0).tolist()},
    }


# --- outputs -----------------------------------------------------------------------------------

def output_digests(run: RunDir) -> dict[str, str]:
    """{name relative to the run: content digest} of every kept and rejected shard of the run."""
    return file_digests([*list_shards(run.filtered), *list_shards(run.rejected)], run.root)


def _up_to_date(run: RunDir, output_key: str) -> bool:
    """The outputs were made from these scores and this lineage, and are still the shards it wrote."""
    manifest = manifest_path(run.filtered)
    if not manifest.exists() or not run.filter_stats.exists():
        return False
    made = read_json(manifest)
    return made.get("output_key") == output_key and made.get("outputs") == output_digests(run)


def finish(run: RunDir, config: dict[str, Any], stats: dict[str, Any], output_key: str,
           partitions: list[Partition], lineage: dict[str, Any], staged: dict[str, str]) -> None:
    """Move staged outputs into place (renumbered, every old shard removed first, so old and new
    outputs never mix), then write stats.json, report.png and manifest.json: lineage, and the content
    digest of every shard (``staged``: digests by ``kept/part-…`` or ``rejected/part-…`` staging name).
    ``config`` is the public config the manifest records."""
    staging = run.dedup / "write"
    manifest_path(run.filtered).unlink(missing_ok=True)  # outputs are in flux until the manifest is back
    outputs: dict[str, str] = {}
    for sub, dest in (("kept", run.filtered), ("rejected", run.rejected)):
        for old in list_shards(dest):
            old.unlink()
        dest.mkdir(parents=True, exist_ok=True)
        for j, part in enumerate(list_shards(staging / sub)):
            final = shard_path(dest, j)
            part.replace(final)
            outputs[relative_name(final, run.root)] = staged[f"{sub}/{part.name}"]
    shutil.rmtree(staging, ignore_errors=True)
    write_json(stats, run.filter_stats)
    hist = stats["edu_hist"]
    plot_report(run.filter_report, stats["stages"], np.asarray(hist["bins"]), np.asarray(hist["scored"]),
                np.asarray(hist["kept"]))
    inputs = sorted({(p.source.file.path, p.digest) for p in partitions})
    write_json(build_manifest("filter", config, output_key=output_key,
                              inputs=[{"path": p, "digest": d} for p, d in inputs], lineage=lineage,
                              outputs=dict(sorted(outputs.items())), documents_in=stats["documents_in"],
                              documents_out=stats["documents_out"], timings_s=stats["timings_s"]),
               manifest_path(run.filtered))
    print(_summary_line(stats, run.filtered))


def _summary_line(stats: dict[str, Any], folder: Path) -> str:
    removed = ", ".join(f"{r['stage']} -{r['docs_removed']:,}" for r in stats["stages"] if r["docs_removed"])
    return (f"filter: kept {stats['documents_out']:,}/{stats['documents_in']:,} documents "
            f"({removed or 'nothing removed'}) -> {folder}")
