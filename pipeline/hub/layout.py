"""The data files of a published run: which configs and splits exist and where they live in the upload folder.

The card's ``configs:`` metadata and the push folder are both built from :func:`data_configs`, so the
paths the card names are exactly the files that are uploaded.

- ``generated``: every generated row, as written by ``textbook generate``;
- ``filtered_web``: web documents kept by ``textbook filter`` (generated rows that also went through
  the filter are left out: they are in ``generated``);
- ``sft``: the synthetic student/teacher conversations as chat ``messages``, for SFT.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.hub.provenance import public_path
from pipeline.io import copy_file, current_umask, list_shards, read_table, write_parquet
from pipeline.rundir import GENERATED_SOURCE, ID, MESSAGES, SOURCE, RunDir

# The upload folder, which is the published repo's layout (a contract of its own: the card links
# these paths and readers download them), apart from the run directory's (pipeline.rundir).
CARD_FILE = "README.md"
MODEL_CARD_DIR = "model"  # card/model/README.md: the model card beside the dataset card
DATA_DIR = "data"
FIGURES_DIR = "figures"
MANIFESTS_DIR = "manifests"
CLASSIFIER_DIR = "classifier"
REPRODUCE_DIR = "reproduce"

Transform = Callable[[pa.Table], pa.Table]
Conversation = list[dict[str, str]]


@dataclass
class DataConfig:
    """One ``configs:`` entry of the card: a name, a split, its source shards and how rows are selected."""

    name: str
    split: str
    description: str
    sources: list[Path]
    transform: Transform | None = None
    run_dir: Path | None = None
    """The run whose local paths the published rows show by their public names."""
    rows: int = 0
    files: list[str] = field(default_factory=list)
    """Paths of the written files, relative to the upload folder (filled by :func:`write_data`)."""

    @property
    def folder(self) -> str:
        return f"{DATA_DIR}/{self.name}"

    @property
    def pattern(self) -> str:
        """The ``data_files`` path of this split, relative to the upload folder."""
        return f"{self.folder}/{self.split}-*.parquet"

    def tables(self) -> Iterator[pa.Table]:
        """The selected rows, one Arrow table per source shard (memory stays at one shard)."""
        for source in self.sources:
            table = read_table(source)
            table = self.transform(table) if self.transform else table
            if table.num_rows:
                yield table

    def published(self) -> Iterator[Path | pa.Table]:
        """What each source shard publishes: the shard itself when it goes out unchanged (it is linked,
        not rewritten), else its selected rows with local paths shown by their public names."""
        for source in self.sources:
            if self.transform is None and not _local_paths(source, self.run_dir):
                yield source
                continue
            table = read_table(source)
            table = public_names(self.transform(table) if self.transform else table, self.run_dir)
            if table.num_rows:
                yield table


def data_configs(run_dir: Path, sft_chats: dict[str, Conversation] | None = None) -> list[DataConfig]:
    """The configs a run can publish, with their row counts; configs without rows are left out.

    ``sft_chats`` are the conversations SFT trains on (``pipeline.train.sft.sft_conversations``): the
    published SFT set is exactly what trains.
    """
    run = RunDir(run_dir)
    generated = list_shards(run.generated)
    candidates = [
        DataConfig("generated", "train",
                   "Synthetic textbooks, exercises, stories, conversations and explainers, one row per completion.",
                   generated),
        DataConfig("filtered_web", "train",
                   "Web text kept by the filter (heuristics, edu score, dedup, decontamination).",
                   list_shards(run.filtered), _web_rows),
    ]
    if sft_chats:
        candidates.append(DataConfig(
            "sft", "train", "Synthetic student/teacher conversations as chat messages, for SFT: the ones "
            "the run's SFT trained on (truncated, empty, refused and repetitive ones left out).",
            generated, _sft_rows(sft_chats)))
    configs = []
    for config in candidates:
        config.run_dir = Path(run_dir)
        config.rows = _count(config)
        if config.rows:
            configs.append(config)
    return configs


def write_data(configs: list[DataConfig], dest: Path) -> list[DataConfig]:
    """Write every config's rows as ``dest/data/<name>/<split>-NNNNN.parquet``; fills ``files``.

    Unchanged shards are hard-linked; selected rows are written one shard at a time.
    """
    for config in configs:
        config.files = []
        for i, table in enumerate(config.published()):
            rel = f"{config.folder}/{config.split}-{i:05d}.parquet"
            if isinstance(table, Path):
                _link_or_copy(table, dest / rel)
            else:
                write_parquet(table, dest / rel)
            config.files.append(rel)
    return configs


# Columns whose values may name a local file or folder: the generator model (a local folder) and a
# filtered document's input file. Published rows show them as the card does (public_path).
PUBLIC_COLUMNS = ("model", SOURCE)


def public_names(table: pa.Table, run_dir: Path | None) -> pa.Table:
    """``table`` with every local path in ``PUBLIC_COLUMNS`` replaced by its public name."""
    for name, shown in _public_values(table, run_dir).items():
        column = table[name]
        index = pc.index_in(column, value_set=pa.array(list(shown)))
        public = pc.take(pa.array(list(shown.values()), column.type), index)
        table = table.set_column(table.column_names.index(name), name, pc.coalesce(public, column))
    return table


def _public_values(table: pa.Table, run_dir: Path | None) -> dict[str, dict[str, str]]:
    """{column: {local path: public name}} of the values of ``PUBLIC_COLUMNS`` that name local paths."""
    found = {}
    for name in PUBLIC_COLUMNS:
        kind = table.schema.field(name).type if name in table.column_names else None
        if kind is not None and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            values = (v for v in pc.unique(table[name]).to_pylist() if isinstance(v, str))
            shown = {v: p for v in values if (p := public_path(v, run_dir or Path())) != v}
            if shown:
                found[name] = shown
    return found


def _local_paths(shard: Path, run_dir: Path | None) -> bool:
    columns = [c for c in PUBLIC_COLUMNS if c in pq.read_schema(shard).names]
    return bool(columns) and bool(_public_values(read_table(shard, columns), run_dir))


def _count(config: DataConfig) -> int:
    if config.transform is None:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in config.sources)
    return sum(t.num_rows for t in config.tables())


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link an unchanged shard (no copy of a large run); copy it across file systems, or when its
    mode is not the umask's (a link shares the source's mode: a 0600 shard would stay 0600)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    if stat.S_IMODE(source.stat().st_mode) == 0o666 & ~current_umask():
        try:
            target.hardlink_to(source)
            return
        except OSError:
            pass
    copy_file(source, target)


def _web_rows(table: pa.Table) -> pa.Table:
    if SOURCE not in table.column_names:
        return table
    return table.filter(pc.fill_null(pc.not_equal(table[SOURCE], GENERATED_SOURCE), True))


def _sft_rows(chats: dict[str, Conversation]) -> Transform:
    def transform(table: pa.Table) -> pa.Table:
        if ID not in table.column_names:
            return table.slice(0, 0).select([])
        rows = table.filter(pc.is_in(table[ID], pa.array(list(chats), pa.string())))
        columns = {c: rows[c].to_pylist() if c in rows.column_names else [None] * rows.num_rows
                   for c in ("topic", "audience")}
        ids = rows[ID].to_pylist()
        return pa.table({ID: ids, MESSAGES: [chats[i] for i in ids], **columns}, schema=_SFT_SCHEMA)

    return transform


_SFT_SCHEMA = pa.schema([
    (ID, pa.string()),
    (MESSAGES, pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("topic", pa.string()),
    ("audience", pa.string()),
])

