"""Inputs of the filter stage: discovery, up-front validation, and partitions of ``id, text, source``.

Every file is validated before anything is written (a corrupt Parquet file, a missing text
column, invalid JSON or UTF-8 name the file and line), and validation also cuts files into
partitions of about ``partition_rows`` documents, which are the resumable shards.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from pipeline.errors import DataError
from pipeline.io import InputFile, expand_inputs, file_digest, iter_batches, list_shards

GENERATED = "generated"


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
    """Rows ``[start, stop)`` of a source: ``row_groups`` for Parquet, a byte ``offset`` for JSONL."""

    source: Source
    start: int
    stop: int | None
    digest: str
    row_groups: tuple[int, ...] = ()
    offset: int = 0
    has_id: bool = True

    @property
    def key(self) -> dict:
        return {"input": self.source.file.path, "start": self.start, "stop": self.stop, "digest": self.digest}


def discover(patterns: list[str], text_column: str, id_column: str, run_dir: Path,
             include_generated: bool, limit: int | None) -> list[Source]:
    """The configured inputs, then the run's generated shards (their own `text`/`id` columns)."""
    sources = [Source(f, text_column, id_column, f.path, limit) for f in expand_inputs(patterns)] if patterns else []
    if include_generated:
        given = {Path(s.file.path).resolve() for s in sources if not s.file.path.startswith("hf://")}
        sources += [Source(InputFile(str(p), "parquet"), "text", "id", GENERATED)
                    for p in list_shards(Path(run_dir) / "generated") if p.resolve() not in given]
    return sources


def validate(source: Source, partition_rows: int) -> list[Partition]:
    """Check a source end to end and cut it into partitions; raise DataError naming the file."""
    kind = source.file.kind
    on_hub = source.file.path.startswith("hf://") or kind == "hf_dataset"
    if kind == "parquet" and not on_hub:
        return _validate_parquet(source, partition_rows)
    if kind == "jsonl":
        return _validate_jsonl(source, partition_rows)
    # On the Hub: streamed as one partition up to the limit. Reading the first row now catches an
    # unreachable source or a missing text column before anything is written.
    if kind == "hf_dataset" and source.limit is None:
        raise DataError(f"{source.file.path}: a streamed Hugging Face dataset needs a document limit: "
                        "set filter.limit")
    next(iter_batches(source.file, [source.text_column], batch_size=1, limit=1), None)
    return [Partition(source, 0, source.limit, digest=f"{source.file.path}:{source.limit}")]


def _validate_parquet(source: Source, partition_rows: int) -> list[Partition]:
    path = source.file.path
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if source.text_column not in names:
            raise DataError(f"{path}: missing text column {source.text_column!r} (has: {', '.join(names)}); "
                            "set filter.text_column")
        for i in range(pf.num_row_groups):  # reads every page: corrupt data fails here, not mid-run
            column = pf.read_row_group(i, columns=[source.text_column]).column(0)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                    or pa.types.is_null(column.type)):
                raise DataError(f"{path}: text column {source.text_column!r} has type {column.type}, "
                                "expected strings")
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot read Parquet: {str(e).splitlines()[0]}") from None
    digest = file_digest(Path(path))
    parts, groups, start, rows = [], [], 0, 0
    for i in range(pf.num_row_groups):
        groups.append(i)
        rows += pf.metadata.row_group(i).num_rows
        if rows - start >= partition_rows or i == pf.num_row_groups - 1:
            parts.append(Partition(source, start, rows, digest, tuple(groups), has_id=source.id_column in names))
            groups, start = [], rows
    return _limited(parts, source.limit)


def _validate_jsonl(source: Source, partition_rows: int) -> list[Partition]:
    path = source.file.path
    opener = gzip.open if path.endswith(".gz") else open
    digest = file_digest(Path(path))
    parts: list[Partition] = []
    start, offset, row, has_id = 0, 0, 0, False
    try:
        with opener(path, "rb") as f:
            position = 0
            for lineno, raw in enumerate(f, 1):
                line_start, position = position, position + len(raw)
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid UTF-8 (byte {e.start})") from None
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object per line")
                if source.text_column not in record:
                    raise DataError(f"{path}:{lineno}: missing text column {source.text_column!r} "
                                    f"(has: {', '.join(record)}); set filter.text_column")
                has_id = has_id or source.id_column in record
                if row - start == partition_rows:
                    parts.append(Partition(source, start, row, digest, offset=offset))
                    start, offset = row, line_start
                row += 1
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read JSONL: {str(e).splitlines()[0]}") from None
    if row > start or not parts:
        parts.append(Partition(source, start, row, digest, offset=offset))
    return _limited([Partition(p.source, p.start, p.stop, p.digest, offset=p.offset, has_id=has_id)
                     for p in parts], source.limit)


def _limited(parts: list[Partition], limit: int | None) -> list[Partition]:
    if limit is None:
        return parts
    kept = [p for p in parts if p.start < limit]
    return [Partition(p.source, p.start, min(p.stop, limit) if p.stop is not None else limit, p.digest,
                      p.row_groups, p.offset, p.has_id) for p in kept]


def read_partition(part: Partition) -> pd.DataFrame:
    """The partition as ``id, text, source``: ids kept when present, else a stable hash of source + row."""
    src = part.source
    columns = [src.text_column] + ([src.id_column] if part.has_id else [])
    if src.file.path.startswith("hf://") or src.file.kind == "hf_dataset":
        frame = pd.concat(list(iter_batches(src.file, None, limit=part.stop)) or [pd.DataFrame()],
                          ignore_index=True)
        if src.text_column not in frame:
            raise DataError(f"{src.file.path}: missing text column {src.text_column!r}")
    elif src.file.kind == "parquet":
        try:
            pf = pq.ParquetFile(src.file.path)
            frame = pf.read_row_groups(list(part.row_groups), columns=columns).to_pandas()
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{src.file.path}: cannot read Parquet: {str(e).splitlines()[0]}") from None
        frame = frame.iloc[:part.stop - part.start] if part.stop is not None else frame
    else:
        frame = _read_jsonl_rows(part, columns)
    rows = range(part.start, part.start + len(frame))
    given = frame[src.id_column] if src.id_column in frame else pd.Series([None] * len(frame))
    ids = [str(v) if v is not None and v == v else document_id(src.label, r)
           for v, r in zip(given.tolist(), rows, strict=True)]
    texts = [t if isinstance(t, str) else "" for t in frame[src.text_column].tolist()]
    return pd.DataFrame({"id": ids, "text": texts, "source": src.label})


def document_id(source: str, row: int) -> str:
    """A made id, stable across runs: hash of the source and the row number."""
    return xxhash.xxh3_64_hexdigest(f"{source}\0{row}".encode())


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
