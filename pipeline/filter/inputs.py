"""Inputs of the filter stage: discovery, up-front validation, and partitions of ``id, text, source``.

Every file is validated before anything is written (a corrupt Parquet page, a missing text
column, invalid JSON or UTF-8 name the file and line): validation reads every page or line of the
columns a partition will read, up to ``filter.limit``, so nothing the run reads later can fail.
Validation also cuts files into partitions of about ``partition_rows`` documents, which are the
resumable shards; a Parquet row group larger than that is cut into row ranges.

A local file is identified by the sha256 of its bytes, so a shard's stored scores are reused only
for the very same content.
"""

from __future__ import annotations

import bisect
import gzip
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from pipeline.errors import DataError
from pipeline.io import InputFile, atomic_path, expand_inputs, iter_batches, list_shards
from pipeline.lineage import content_digest
from pipeline.rundir import GENERATED_SOURCE, ID, SOURCE, TEXT, RunDir


@dataclass(frozen=True)
class Source:
    """One input file and how to read it."""

    file: InputFile
    text_column: str
    id_column: str
    label: str  # the `source` column: the path as given, or "generated"
    limit: int | None = None


@dataclass(frozen=True)
class Partition:
    """Rows ``[start, stop)`` of a source.

    Parquet: the ``row_groups`` holding those rows, the first of which starts at file row
    ``group_start``. JSONL: the byte ``offset`` of row ``start``. ``digest``: the file's content
    digest (a Hub source: its name and limit).
    """

    source: Source
    start: int
    stop: int | None
    digest: str
    row_groups: tuple[int, ...] = ()
    offset: int = 0
    has_id: bool = True
    group_start: int = 0
    copy: str | None = None
    """An Arrow IPC file of the partition's columns, written while validation decoded them, so
    that scoring reads them without decoding again (None: read the source)."""

    @property
    def rows(self) -> int | None:
        return None if self.stop is None else self.stop - self.start

    @property
    def key(self) -> dict:
        """What the partition's scores depend on: the content and how it is read."""
        src = self.source
        return {"input": src.file.path, "label": src.label, "columns": [src.text_column, src.id_column],
                "start": self.start, "stop": self.stop, "digest": self.digest}


def discover(patterns: list[str], text_column: str, id_column: str, run_dir: Path,
             include_generated: bool, limit: int | None) -> list[Source]:
    """The configured inputs, then the run's generated shards (their own `text`/`id` columns)."""
    sources = [Source(f, text_column, id_column, f.path, limit) for f in expand_inputs(patterns)] if patterns else []
    if include_generated:
        given = {Path(s.file.path).resolve() for s in sources if not s.file.path.startswith("hf://")}
        sources += [Source(InputFile(str(p), "parquet"), TEXT, ID, GENERATED_SOURCE)
                    for p in list_shards(RunDir(run_dir).generated) if p.resolve() not in given]
    return sources


def validate_input(source: Source, partition_rows: int, copies: Path | None = None
                   ) -> tuple[list[Partition], int | None]:
    """Check a source end to end and cut it into partitions; raise DataError naming the file.

    Returns the partitions (up to ``source.limit`` documents) and the documents the file holds
    (None for a streamed Hub source), so a limit that left documents unread can be reported.
    With ``copies`` (a folder), the columns of each Parquet partition that validation decodes are
    kept there as an uncompressed Arrow file (``Partition.copy``): a row range inside a large row
    group is then not decoded again, from the group's start, by the task that scores it.
    """
    kind = source.file.kind
    if kind == "parquet" and not source.file.on_hub:
        return _validate_parquet(source, partition_rows, copies)
    if kind == "jsonl":
        return _validate_jsonl(source, partition_rows)
    # On the Hub: streamed as one partition up to the limit. Reading the first row now catches an
    # unreachable source or a missing text column before anything is written.
    if kind == "hf_dataset" and source.limit is None:
        raise DataError(f"{source.file.path}: a streamed Hugging Face dataset needs a document limit: "
                        "set filter.limit")
    next(iter_batches(source.file, [source.text_column], batch_size=1, limit=1), None)
    return [Partition(source, 0, source.limit, digest=f"{source.file.path}:{source.limit}")], None


def _validate_parquet(source: Source, partition_rows: int, copies: Path | None) -> tuple[list[Partition], int]:
    path = source.file.path
    try:
        pf = _open_parquet(path)
        schema = pf.schema_arrow
        if source.text_column not in schema.names:
            raise DataError(f"{path}: missing text column {source.text_column!r} (has: {', '.join(schema.names)}); "
                            "set filter.text_column")
        kind = schema.field(source.text_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
            raise DataError(f"{path}: text column {source.text_column!r} has type {kind}, expected strings")
        has_id = source.id_column in schema.names
        total = pf.metadata.num_rows
        wanted = total if source.limit is None else min(total, source.limit)
        group_rows = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        group_starts = [0, *itertools.accumulate(group_rows)]
        parts = []
        for start, stop in row_ranges(group_rows, partition_rows):
            stop = min(stop, wanted)
            if start >= stop and parts:
                break
            first = max(bisect.bisect_right(group_starts, start) - 1, 0)
            last = bisect.bisect_left(group_starts, stop)  # groups first..last-1 hold rows start..stop-1
            groups = tuple(range(first, min(max(last, first + 1), len(group_rows))))
            parts.append(Partition(source, start, stop, "", groups, has_id=has_id, group_start=group_starts[first]))
        # Every page of every column a partition reads (text and id), up to the limit: a corrupt
        # page behind a valid footer fails here, before any output, not mid-run.
        columns = [source.text_column] + ([source.id_column] if has_id else [])
        batches = pf.iter_batches(batch_size=_batch_rows(pf, source.text_column), columns=columns)
        kept = _copy_partitions(batches, parts, wanted, copies) if copies is not None else \
            _read_through(batches, wanted, len(parts))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read Parquet: {str(e).splitlines()[0]}") from None
    digest = content_digest(path)
    return [replace(p, digest=digest, copy=copy) for p, copy in zip(parts, kept, strict=True)], total


def _read_through(batches: Iterator[pa.RecordBatch], wanted: int, parts: int) -> list[None]:
    """Validate by reading every batch up to ``wanted`` rows; no copies (one None per partition)."""
    seen = 0
    for batch in batches:
        seen += batch.num_rows
        if seen >= wanted:
            break
    return [None] * parts


def _copy_partitions(batches: Iterator[pa.RecordBatch], parts: list[Partition], wanted: int,
                     folder: Path) -> list[str | None]:
    """Validate by reading every batch up to ``wanted`` rows, writing each partition's rows to an
    Arrow file in ``folder`` on the way; the paths, one per partition."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[str | None] = []
    pending: list[pa.RecordBatch] = []
    row = 0
    batch_iter = iter(batches)
    for part in parts:
        need = (part.stop or 0) - part.start
        while sum(b.num_rows for b in pending) < need and row < wanted:
            batch = next(batch_iter, None)
            if batch is None:
                break
            row += batch.num_rows
            pending.append(batch)
        table = pa.Table.from_batches(pending) if pending else None
        if table is None or need <= 0:
            paths.append(None)
            continue
        name = xxhash.xxh3_64_hexdigest(f"{part.source.file.path}\0{part.start}".encode())
        target = folder / f"{name}.arrow"
        with atomic_path(target) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table.slice(0, need))
        pending = table.slice(need).to_batches()
        paths.append(str(target))
    return paths


def row_ranges(group_rows: list[int], partition_rows: int) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of about ``partition_rows``: small row groups are gathered whole
    (a read never cuts them), a row group of ``partition_rows`` or more is cut into equal ranges
    (pyarrow writes up to a million rows per group by default: one group must not be one task)."""
    ranges: list[tuple[int, int]] = []
    start = row = 0
    for n in group_rows:
        if n >= partition_rows:
            if row > start:
                ranges.append((start, row))
            pieces = -(-n // partition_rows)
            cuts = [row + n * k // pieces for k in range(pieces + 1)]
            ranges += list(zip(cuts, cuts[1:], strict=False))
            row = start = row + n
            continue
        row += n
        if row - start >= partition_rows:
            ranges.append((start, row))
            start = row
    if row > start or not ranges:
        ranges.append((start, row))
    return ranges


def _validate_jsonl(source: Source, partition_rows: int) -> tuple[list[Partition], int]:
    path = source.file.path
    opener = gzip.open if path.endswith(".gz") else open
    limit = source.limit
    parts: list[Partition] = []
    start, offset, row, has_id = 0, 0, 0, False
    try:
        with opener(path, "rb") as f:
            position = 0
            for lineno, raw in enumerate(f, 1):
                line_start, position = position, position + len(raw)
                if not raw.strip():
                    continue
                if limit is not None and row >= limit:
                    row += 1  # past filter.limit: counted for the report, never read
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid UTF-8 (byte {e.start})") from None
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}:{e.colno}: invalid JSON: {e.msg}") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object per line")
                if source.text_column not in record:
                    raise DataError(f"{path}:{lineno}: missing text column {source.text_column!r} "
                                    f"(has: {', '.join(record)}); set filter.text_column")
                has_id = has_id or source.id_column in record
                if row - start == partition_rows:
                    parts.append(Partition(source, start, row, "", offset=offset))
                    start, offset = row, line_start
                row += 1
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read JSONL: {str(e).splitlines()[0]}") from None
    read = row if limit is None else min(row, limit)
    if read > start or not parts:
        parts.append(Partition(source, start, read, "", offset=offset))
    digest = content_digest(path)
    return [Partition(p.source, p.start, p.stop, digest, offset=p.offset, has_id=has_id) for p in parts], row


def read_partition(part: Partition) -> pd.DataFrame:
    """The partition as ``id, text, source``: ids kept when present, else a stable hash of source + row."""
    src = part.source
    columns = [src.text_column] + ([src.id_column] if part.has_id else [])
    if src.file.on_hub:
        frame = pd.concat(list(iter_batches(src.file, None, limit=part.stop)) or [pd.DataFrame()],
                          ignore_index=True)
        if src.text_column not in frame:
            raise DataError(f"{src.file.path}: missing text column {src.text_column!r}")
    elif part.copy is not None:  # the rows validation decoded (pipeline.filter.inputs.validate_input)
        with pa.memory_map(part.copy) as source:
            frame = pa.ipc.open_file(source).read_all().to_pandas()
    elif src.file.kind == "parquet":
        try:
            frame = _read_parquet_rows(part, columns)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{src.file.path}: cannot read Parquet: {str(e).splitlines()[0]}") from None
    else:
        frame = _read_jsonl_rows(part, columns)
    rows = range(part.start, part.start + len(frame))
    given = frame[src.id_column] if src.id_column in frame else pd.Series([None] * len(frame))
    ids = [str(v) if v is not None and v == v else document_id(src.label, r)
           for v, r in zip(given.tolist(), rows, strict=True)]
    texts = frame[src.text_column]
    if isinstance(texts.dtype, pd.StringDtype):  # Arrow strings stay Arrow: no Python object per text
        texts = texts.fillna("").reset_index(drop=True)
    else:
        texts = [t if isinstance(t, str) else "" for t in texts.tolist()]
    return pd.DataFrame({ID: ids, TEXT: texts, SOURCE: src.label})


def document_id(source: str, row: int) -> str:
    """A made id, stable across runs: hash of the source and the row number."""
    return xxhash.xxh3_64_hexdigest(f"{source}\0{row}".encode())


# Text per decoded batch. A batch's pages are decoded at once: 8,192 rows of 7 KB documents held
# a whole 40 MB file (0.15 GB above the rows kept); ~4 MB batches, read through a 1 MB buffer
# instead of whole column chunks, hold ~60 MB, and decode sooner.
_BATCH_BYTES = 4 << 20


def _open_parquet(path: str) -> pq.ParquetFile:
    return pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)


def text_bytes(meta: pq.FileMetaData, text_column: str) -> int:
    """Uncompressed bytes of a Parquet file's text column, from its footer (ValueError: no such column)."""
    column = meta.schema.names.index(text_column)
    return sum(meta.row_group(g).column(column).total_uncompressed_size for g in range(meta.num_row_groups))


def _batch_rows(pf: pq.ParquetFile, text_column: str) -> int:
    """Rows per decoded batch: about ``_BATCH_BYTES`` of text (from the footer), 64 to 8,192."""
    try:
        text = text_bytes(pf.metadata, text_column)
    except ValueError:  # validation names the missing column
        return 8192
    return max(64, min(8192, _BATCH_BYTES * pf.metadata.num_rows // max(text, 1)))


def _read_parquet_rows(part: Partition, columns: list[str]) -> pd.DataFrame:
    """Rows ``[start, stop)`` from their row groups, batch by batch: a range inside a large row group
    decodes the rows before it in that group but keeps only its own."""
    skip, want = part.start - part.group_start, part.stop - part.start
    batches: list[pa.RecordBatch] = []
    pf = _open_parquet(part.source.file.path)
    rows = _batch_rows(pf, part.source.text_column)
    for batch in [] if want <= 0 else pf.iter_batches(batch_size=rows, row_groups=list(part.row_groups), columns=columns):
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        batch = batch.slice(skip, want)
        skip, want = 0, want - batch.num_rows
        batches.append(batch)
        if want <= 0:
            break
    if not batches:  # an empty file or range
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    return pa.Table.from_batches(batches).to_pandas()


def _read_jsonl_rows(part: Partition, columns: list[str]) -> pd.DataFrame:
    path = part.source.file.path
    opener = gzip.open if path.endswith(".gz") else open
    want = None if part.stop is None else part.stop - part.start
    rows: list[dict] = []
    with opener(path, "rb") as f:
        f.seek(part.offset)
        for raw in f:
            if want is not None and len(rows) >= want:
                break
            if raw.strip():
                record = json.loads(raw.decode("utf-8"))
                rows.append({c: record.get(c) for c in columns})
    return pd.DataFrame(rows, columns=columns)
