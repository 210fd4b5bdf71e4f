"""A run's named text sources (``train.sources``): Parquet paths with row conditions, read as ``id``
and ``text``; the validation split, by a hash of the id, that training holds out and eval measures
bits per byte on; and the stage manifests beside a source's files (its lineage's parents).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xxhash
from pydantic import Field

from pipeline.errors import EmptySourceError, PipelineError, TrainError
from pipeline.io import expand_inputs, read_parquet
from pipeline.lineage import manifest_ref, relative_name
from pipeline.rundir import ID, MESSAGES, TEXT, manifest_path
from pipeline.settings import Section


class RowCondition(Section):
    """Keep a source's rows where ``column op value``; ``percentile`` sets ``value`` to that percentile
    of the column. A source lists its conditions under the YAML key ``filters``."""

    column: str
    op: Literal["==", "!=", ">", ">=", "<", "<=", "in", "not in", "excludes"] = "=="
    """``excludes``: a list column (e.g. ``flags``) holding none of ``value``."""
    value: Any = None
    percentile: float | None = Field(default=None, ge=0, le=100)


class SourceConfig(Section):
    paths: list[str] = []
    text_column: str = TEXT
    id_column: str = ID
    filters: list[RowCondition] = []
    max_docs: int | None = None
    """Read at most this many documents (after filtering), in file order."""


_OPS: dict[str, Callable[[pd.Series, object], pd.Series]] = {
    "==": lambda s, v: s == v, "!=": lambda s, v: s != v, ">": lambda s, v: s > v,
    ">=": lambda s, v: s >= v, "<": lambda s, v: s < v, "<=": lambda s, v: s <= v,
    "in": lambda s, v: s.isin(list(v)), "not in": lambda s, v: ~s.isin(list(v)),
    "excludes": lambda s, v: s.map(lambda row: row is None or not set(row) & set(v)),
}


def source_files(name: str, spec: SourceConfig, run_dir: Path) -> list[str]:
    """The Parquet files of a source (``{run_dir}`` substituted); TrainError if there are none."""
    if not spec.paths:
        raise TrainError(f"config key 'train.sources.{name}.paths': the source is empty (no paths)")
    patterns = [p.replace("{run_dir}", str(run_dir)) for p in spec.paths]
    try:
        return [f.path for f in expand_inputs(patterns)]
    except PipelineError as e:
        raise TrainError(f"train.sources.{name}: {e}") from None


def check_source(name: str, spec: SourceConfig, run_dir: Path) -> list[str]:
    """The source's files, each holding (by its footer alone) the columns reading it needs: a cheap
    check before anything is built or discarded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = source_files(name, spec, run_dir)
    for path in files:
        try:
            names = pq.read_schema(path).names
        except (OSError, pa.ArrowException) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise TrainError(f"{path}: source {name!r}: cannot read Parquet ({first})") from None
        check_columns(path, name, spec, names)
    return files


def check_columns(path: str, name: str, spec: SourceConfig, names: Sequence[str]) -> None:
    """A file of source ``name`` has its text (or a ``messages`` conversation) and every column its
    row conditions test (an ``excludes`` column may be absent: the file has none of the values);
    else one line naming the file, the column and what it has."""
    has = ", ".join(names)
    if spec.text_column not in names and MESSAGES not in names:
        raise TrainError(f"{path}: source {name!r} needs column {spec.text_column!r} "
                         f"(train.sources.{name}.text_column) or {MESSAGES!r} (has: {has})")
    for f in spec.filters:
        if f.column not in names and f.op != "excludes":
            raise TrainError(f"{path}: source {name!r} needs column {f.column!r} for its row condition "
                             f"(train.sources.{name}.filters; set it to [] for data without it) (has: {has})")


def chat_text(messages: Sequence[dict]) -> str:
    """The text of a conversation stored only as ``messages``: each turn as ``role: content``."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def read_source(name: str, spec: SourceConfig, run_dir: Path) -> pd.DataFrame:
    """All documents of a source after its row conditions, as columns ``id`` and ``text``, in file order.

    A file without the text column but with ``messages`` (TRL / ``datasets`` chat data) gives each
    conversation's :func:`chat_text`; SFT reads its ``messages`` themselves.
    """
    files = source_files(name, spec, run_dir)
    columns = list(dict.fromkeys([spec.text_column, *(f.column for f in spec.filters)]))
    frames = []
    for path in files:
        df = read_parquet(Path(path))
        check_columns(path, name, spec, list(df.columns))
        # a file without the column of an ``excludes`` condition holds none of the values (no flags)
        df = df.assign(**{f.column: None for f in spec.filters if f.op == "excludes" and f.column not in df.columns})
        if spec.text_column not in df.columns:
            df[spec.text_column] = [chat_text(m) if m is not None else "" for m in df[MESSAGES]]
        ids = df[spec.id_column].astype(str) if spec.id_column in df.columns else (
            pd.Series([f"{path}:{i}" for i in range(len(df))], index=df.index))
        frames.append(df[columns].assign(**{ID: ids.values}))
    rows = pd.concat(frames, ignore_index=True)
    total = len(rows)
    for f in spec.filters:
        rows = rows[_condition_mask(rows, f)]
    rows = rows[rows[spec.text_column].fillna("").astype(str).str.strip() != ""]
    if spec.max_docs is not None:
        rows = rows.iloc[: spec.max_docs]
    if rows.empty:
        raise EmptySourceError(f"train.sources.{name}: no documents left ({total} rows in {len(files)} files "
                         f"before filters {[f.model_dump(exclude_none=True) for f in spec.filters]})")
    return pd.DataFrame({ID: rows[ID].values, TEXT: rows[spec.text_column].astype(str).values})


def _condition_mask(rows: pd.DataFrame, f: RowCondition) -> pd.Series:
    col = rows[f.column]
    value = f.value
    if f.percentile is not None:
        value = float(np.nanpercentile(pd.to_numeric(col, errors="coerce"), f.percentile))
    return _OPS[f.op](col, value).fillna(False).astype(bool)


def validation_mask(ids: Sequence[str], fraction: float) -> np.ndarray:
    """Rows held out for validation, by a hash of the id: stable across runs and file orders."""
    h = np.array([xxhash.xxh64_intdigest(str(i).encode("utf-8")) for i in ids], dtype=np.uint64)
    mask = (h % np.uint64(1_000_000)) < np.uint64(int(fraction * 1_000_000))
    if len(ids) >= 2 and not mask.any():
        mask[int(np.argmin(h))] = True  # tiny sources still get one validation document
    if mask.all():
        mask[int(np.argmax(h))] = False
    return mask


def source_parents(files: Iterable[str], run_dir: Path) -> dict[str, dict[str, str]]:
    """``{folder: manifest_ref}`` of the stage manifests (filtered/, generated/, ...) beside the files read."""
    parents: dict[str, dict[str, str]] = {}
    for folder in sorted({Path(f).parent for f in files}):
        ref = manifest_ref(manifest_path(folder), run_dir)
        if ref is not None:
            parents[relative_name(folder, run_dir)] = ref
    return parents
