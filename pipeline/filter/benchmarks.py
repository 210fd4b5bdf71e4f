"""Benchmark sets for decontamination: a loader for local files or Hub datasets (the presets are config)."""

from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd

from filters.decontaminate import item_text
from pipeline.errors import DataError
from pipeline.filter.config import BenchmarkConfig
from pipeline.io import InputFile, iter_batches

_LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson", ".parquet", ".csv")


def load_benchmark(bench: BenchmarkConfig) -> list[list[str]]:
    """The items of one benchmark, each a list of text segments (one per configured column)."""
    assert bench.path is not None and bench.columns is not None  # filled by BenchmarkConfig
    frame = _read_local(bench) if _is_local(bench.path) else _read_hub(bench)
    if bench.limit:
        frame = frame.iloc[:bench.limit]
    return [[item_text(v) for v in row] for row in frame[bench.columns].itertuples(index=False)]


def _is_local(path: str) -> bool:
    return Path(path).expanduser().exists() or any(c in path for c in "*?[") or path.lower().endswith(
        _LOCAL_SUFFIXES)


def _read_local(bench: BenchmarkConfig) -> pd.DataFrame:
    files = sorted(glob.glob(str(Path(bench.path).expanduser()), recursive=True))
    if not files:
        raise DataError(f"benchmark {bench.name}: {bench.path}: no such file")
    frames = []
    for f in files:
        if f.lower().endswith(".csv"):
            try:
                frame = pd.read_csv(f)
            except (OSError, ValueError) as e:
                raise DataError(f"benchmark {bench.name}: {f}: cannot read CSV: {e}") from None
        else:
            kind = "parquet" if f.lower().endswith(".parquet") else "jsonl"
            frame = pd.concat(list(iter_batches(InputFile(f, kind))), ignore_index=True)
        missing = [c for c in bench.columns if c not in frame.columns]
        if missing:
            raise DataError(f"benchmark {bench.name}: {f}: missing column {missing[0]!r} "
                            f"(has: {', '.join(map(str, frame.columns))}); set its columns")
        frames.append(frame[bench.columns])
    return pd.concat(frames, ignore_index=True)


def _read_hub(bench: BenchmarkConfig) -> pd.DataFrame:
    import datasets

    try:
        ds = datasets.load_dataset(bench.path, bench.subset, split=bench.split or "test")
    except Exception as e:  # offline, gated or renamed: one line a user can act on
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"benchmark {bench.name}: cannot load {bench.path} from the Hugging Face Hub "
                        f"({first}); set filter.decontaminate.benchmarks[].path to a local file") from None
    missing = [c for c in bench.columns if c not in ds.column_names]
    if missing:
        raise DataError(f"benchmark {bench.name}: {bench.path} has no column {missing[0]!r} "
                        f"(has: {', '.join(ds.column_names)})")
    return ds.select_columns(bench.columns).to_pandas()
