"""Shard I/O shared by every stage: atomic Parquet/JSON writes, manifests, input discovery.

Nothing is ever half-written: files go to a temporary name in the same folder and are renamed
into place, so a crash leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import DataError
from pipeline.rundir import SHARD_GLOB as SHARD_GLOB  # noqa: F401  (re-exported until callers move)
from pipeline.rundir import list_shards, shard_path  # noqa: F401

if TYPE_CHECKING:  # imported where used: a process that only writes JSON or a PNG skips ~0.5 s of imports
    import pandas as pd
    import pyarrow as pa


def current_umask() -> int:
    """The process umask, read without changing it (Linux); the os.umask dance elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed into place with the mode an
    ordinary ``open`` would give (``0o666 & ~umask``), so a shared run directory stays readable.

    ``mkstemp`` alone makes files 0600 whatever the umask. On any error the temporary is removed and
    ``path`` keeps what it had.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole (mode per umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(data: pd.DataFrame | pa.Table, path: Path, compression: str = "zstd") -> Path:
    """Write a Parquet file (zstd unless told) atomically (temporary name in the same folder, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression)
    return Path(path)


def write_json(obj: Any, path: Path) -> Path:
    """Write JSON atomically, pretty-printed for people who open it."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return Path(path)


def write_text(text: str, path: Path) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def copy_file(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` atomically, with the umask's mode (``shutil.copy2`` would carry a
    0600 source's mode into a shared folder)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


def write_png(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically as PNG and close it (figures are built per report)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def read_yaml(path: Path, error: type[Exception], what: str) -> Any:
    """A YAML file's data; a missing file or a syntax error is ``error`` naming the file (and the
    line and column where the parser stopped), ``what`` saying which file it is to the user."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    # libyaml parses ~10x faster (the seed vocabularies: 0.14 s -> 0.03 s of every plan); a file it
    # refuses goes through PyYAML's own parser, whose messages name the line and column
    with suppress(yaml.YAMLError):
        if hasattr(yaml, "CSafeLoader"):
            return yaml.load(text, Loader=yaml.CSafeLoader)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{path}{where}: invalid YAML: {problem}") from None


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_shards(folder: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """All ``part-*.parquet`` shards of a folder as one DataFrame (empty if there are none)."""
    import pandas as pd

    shards = list_shards(folder)
    if not shards:
        return pd.DataFrame(columns=columns or [])
    return pd.concat([read_parquet(p, columns) for p in shards], ignore_index=True)


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file as an Arrow table (its schema as written); errors name the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot read Parquet: {_first_line(e)}") from None
    except KeyError as e:
        raise DataError(f"{path}: missing column {e}") from None


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns).to_pandas()
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot read Parquet: {_first_line(e)}") from None
    except KeyError as e:
        raise DataError(f"{path}: missing column {e}") from None


# --- manifests --------------------------------------------------------------------------------

_PACKAGES = ("datasets", "openai", "datasketch", "fasttext-numpy2-wheel", "dask", "distributed",
             "pyarrow", "jinja2", "transformers", "tokenizers", "torch", "huggingface_hub", "numpy")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def build_manifest(stage: str, config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A stage manifest: the public config (no secrets), versions, git sha, plus stage fields."""
    return {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "config": config,
        **fields,
    }


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hex digest of JSON-able data, stable across processes and runs."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]


# --- input discovery --------------------------------------------------------------------------

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?$")


@dataclass(frozen=True)
class InputFile:
    """One input: a local Parquet/JSONL(.gz) file, an hf:// file, or a Hub dataset id."""

    path: str
    kind: str  # "parquet" | "jsonl" | "hf_dataset"

    @property
    def name(self) -> str:
        return self.path

    @property
    def on_hub(self) -> bool:
        """Read from the Hugging Face Hub (an hf:// file or a dataset id): no local bytes to digest or size."""
        return self.kind == "hf_dataset" or self.path.startswith("hf://")


def expand_inputs(patterns: list[str] | str) -> list[InputFile]:
    """Resolve globs, folders, hf:// paths and Hub dataset ids into input files, in a stable order."""
    if isinstance(patterns, str):
        patterns = [patterns]
    found: list[InputFile] = []
    for pattern in patterns:
        pattern = str(pattern)
        if pattern.startswith("hf://"):
            found.extend(_expand_hf(pattern))
            continue
        local = Path(pattern).expanduser()
        if local.is_dir():
            matches = sorted(str(p) for p in local.rglob("*") if _kind(str(p)))
        else:
            matches = sorted(glob.glob(str(local), recursive=True))
        if not matches:
            if _HF_ID.match(pattern) and not local.exists():
                found.append(InputFile(pattern, "hf_dataset"))
                continue
            raise DataError(f"{pattern}: no input files match")
        for m in matches:
            kind = _kind(m)
            if kind is None:
                raise DataError(f"{m}: unsupported input format (expected .parquet, .jsonl or .jsonl.gz)")
            found.append(InputFile(m, kind))
    return found


def _kind(path: str) -> str | None:
    p = path.lower()
    if p.endswith(".parquet"):
        return "parquet"
    if p.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        return "jsonl"
    return None


def _expand_hf(pattern: str) -> list[InputFile]:
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem()
    try:
        matches = sorted(fs.glob(pattern[len("hf://"):])) if any(c in pattern for c in "*?[") else [
            pattern[len("hf://"):]]
    except Exception as e:  # network or auth: say which path
        raise DataError(f"{pattern}: cannot list on the Hub: {_first_line(e)}") from None
    files = [InputFile("hf://" + m, _kind(m) or "parquet") for m in matches if _kind(m)]
    if not files:
        raise DataError(f"{pattern}: no Parquet/JSONL files on the Hub match")
    return files


def iter_batches(source: InputFile, columns: list[str] | None = None, batch_size: int = 10_000,
                 limit: int | None = None) -> Iterator[pd.DataFrame]:
    """Stream an input as DataFrames of at most ``batch_size`` rows; errors name the file."""
    remaining = limit
    for batch in _raw_batches(source, columns, batch_size):
        if remaining is not None:
            if remaining <= 0:
                return
            batch = batch.iloc[:remaining]
            remaining -= len(batch)
        yield batch


def _raw_batches(source: InputFile, columns: list[str] | None, batch_size: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if source.kind == "hf_dataset":
        yield from _hf_dataset_batches(source.path, columns, batch_size)
        return
    if source.kind == "parquet":
        try:
            if source.path.startswith("hf://"):
                from huggingface_hub import HfFileSystem

                handle = HfFileSystem().open(source.path[len("hf://"):], "rb")
            else:
                handle = source.path
            pf = pq.ParquetFile(handle)
            missing = [c for c in columns or [] if c not in pf.schema_arrow.names]
            if missing:
                raise DataError(f"{source.path}: missing column {missing[0]!r} "
                                f"(has: {', '.join(pf.schema_arrow.names)})")
            for rb in pf.iter_batches(batch_size=batch_size, columns=columns):
                yield rb.to_pandas()
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{source.path}: cannot read Parquet: {_first_line(e)}") from None
        return
    yield from _jsonl_batches(source.path, columns, batch_size)


def _jsonl_batches(path: str, columns: list[str] | None, batch_size: int) -> Iterator[pd.DataFrame]:
    yield from _batched(_jsonl_rows(path, columns), batch_size)


def _jsonl_rows(path: str, columns: list[str] | None) -> Iterator[dict]:
    for where, row in _numbered_jsonl_rows(path):
        yield _project(row, columns, where)


def _numbered_jsonl_rows(path: str) -> Iterator[tuple[str, dict]]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.decode("utf-8", errors="replace"))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}:{e.colno}: invalid JSON: {e.msg}") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object per line")
                yield f"{path}:{lineno}", row
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read JSONL: {_first_line(e)}") from None


def iter_rows(source: InputFile) -> Iterator[tuple[str, dict]]:
    """Every row of an input with where it stands, as an error names it: ``path:line`` (JSONL) or
    ``path: row N`` (1-based)."""
    if source.kind == "jsonl":
        yield from _numbered_jsonl_rows(source.path)
        return
    n = 0
    for batch in _raw_batches(source, None, 10_000):
        for row in batch.to_dict("records"):
            n += 1
            yield f"{source.path}: row {n}", row


def _hf_dataset_batches(spec: str, columns: list[str] | None, batch_size: int) -> Iterator[pd.DataFrame]:
    import datasets

    name, _, split = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train", streaming=True)
    except Exception as e:  # offline, private, missing: one line naming the dataset
        raise DataError(f"{spec}: cannot load Hugging Face dataset: {_first_line(e)}") from None
    yield from _batched((_project(row, columns, spec) for row in ds), batch_size)


def _project(row: dict, columns: list[str] | None, where: str) -> dict:
    """``row`` restricted to ``columns``; a missing column is an error naming ``where``."""
    if not columns:
        return row
    missing = [c for c in columns if c not in row]
    if missing:
        raise DataError(f"{where}: missing column {missing[0]!r}")
    return {c: row[c] for c in columns}


def _batched(rows: Iterator[dict], batch_size: int) -> Iterator[pd.DataFrame]:
    import pandas as pd

    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= batch_size:
            yield pd.DataFrame(batch)
            batch = []
    if batch:
        yield pd.DataFrame(batch)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --- before a stage starts: can it write, can it reach the Hub -----------------------------------

def unwritable(folder: Path) -> Path | None:
    """The folder in the way of writing into ``folder``: ``folder`` itself or a folder under it that
    this process cannot write into, or the nearest existing parent when ``folder`` does not exist
    yet (None: nothing is in the way). A stage asks before its work, not at its first write."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return existing
    if existing == folder:
        for root, dirs, _ in os.walk(folder):
            for d in dirs:
                if not os.access(Path(root) / d, os.W_OK | os.X_OK):
                    return Path(root) / d
    return None


def check_writable(error: type[Exception], *folders: Path) -> None:
    """Raise ``error`` in one line when a stage could not write one of ``folders`` (see :func:`unwritable`)."""
    for folder in folders:
        blocked = unwritable(folder)
        if blocked is not None:
            where = "" if blocked == Path(folder).absolute() else f" ({blocked} is not)"
            raise error(f"{folder}: cannot write there{where}: permission denied; fix its permissions or "
                        "choose another run_dir")


def in_hub_cache(repo_id: str, repo_type: str = "model") -> bool:
    """Whether the local Hub cache holds a snapshot of ``repo_id`` (the libraries then load it offline)."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots"
    if folder.is_dir() and any(folder.iterdir()):
        return True
    if repo_type != "dataset":
        return False
    # a dataset `datasets` has already prepared loads from its own cache too
    prepared = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
    return (prepared / repo_id.replace("/", "___")).is_dir()


def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached now (offline mode, or no answer from the endpoint
    within ``timeout_s``), None when it answers. Any HTTP answer, even an error status, counts."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 is set"
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as e:  # URLError, refused, DNS failure, timeout
        return f"{endpoint}: {getattr(e, 'reason', None) or e}"
    return None
