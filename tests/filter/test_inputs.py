"""Input discovery and partitions: ids kept or made stably, JSONL/Parquet cut into resumable shards."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import DataError
from pipeline.filter.inputs import discover, document_id, read_partition, validate_input
from pipeline.rundir import GENERATED_SOURCE


def test_jsonl_partitions_cover_every_row_once_with_blank_lines_and_gzip(tmp_path: Path) -> None:
    rows = [{"id": f"d{i}", "text": f"document number {i}"} for i in range(23)]
    body = "".join(json.dumps(r) + ("\n\n" if i % 5 == 0 else "\n") for i, r in enumerate(rows))
    (tmp_path / "a.jsonl").write_text(body)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(body.encode()))
    for source in discover([str(tmp_path / "*.jsonl*")], "text", "id", tmp_path, True, None):
        parts, documents = validate_input(source, partition_rows=10)
        assert documents == 23
        assert [(p.start, p.stop) for p in parts] == [(0, 10), (10, 20), (20, 23)]
        frame = pd.concat([read_partition(p) for p in parts], ignore_index=True)
        assert frame.id.tolist() == [r["id"] for r in rows] and (frame.source == source.label).all()


def test_missing_ids_are_made_from_source_and_row_and_are_stable(tmp_path: Path) -> None:
    pd.DataFrame({"text": ["alpha", None, "gamma"]}).to_parquet(tmp_path / "x.parquet")
    (source,) = discover([str(tmp_path / "x.parquet")], "text", "id", tmp_path, True, None)
    (part,), _ = validate_input(source, 100)
    frame = read_partition(part)
    assert frame.id.tolist() == [document_id(str(tmp_path / "x.parquet"), r) for r in range(3)]
    assert frame.id.nunique() == 3 and frame.text.tolist() == ["alpha", "", "gamma"]
    assert read_partition(part).id.tolist() == frame.id.tolist()


def test_generated_shards_are_included_with_their_own_columns_and_a_limit_applies(tmp_path: Path) -> None:
    (tmp_path / "generated").mkdir()
    pd.DataFrame({"id": ["g0", "g1"], "text": ["one", "two"]}).to_parquet(tmp_path / "generated" / "part-00000.parquet")
    (tmp_path / "web.jsonl").write_text("".join(json.dumps({"body": f"web {i}"}) + "\n" for i in range(5)))
    sources = discover([str(tmp_path / "web.jsonl")], "body", "url", tmp_path, True, 3)
    assert [s.label for s in sources] == [str(tmp_path / "web.jsonl"), GENERATED_SOURCE]
    frames = [read_partition(p) for s in sources for p in validate_input(s, 100)[0]]
    assert [len(f) for f in frames] == [3, 2] and frames[1].id.tolist() == ["g0", "g1"]
    assert discover([str(tmp_path / "web.jsonl")], "body", "url", tmp_path, False, None)[-1].label != GENERATED_SOURCE


def test_a_streamed_hub_dataset_needs_a_limit(tmp_path: Path) -> None:
    (source,) = discover(["someone/some-dataset"], "text", "id", tmp_path, False, None)
    with pytest.raises(DataError, match="someone/some-dataset: .*set filter.limit"):
        validate_input(source, 100)


def test_one_parquet_row_group_is_cut_into_partitions_of_about_partition_rows(tmp_path: Path) -> None:
    rows = pd.DataFrame({"id": [f"d{i}" for i in range(100)], "text": [f"document {i}" for i in range(100)]})
    rows.to_parquet(tmp_path / "one_group.parquet")  # pyarrow's default: a single row group
    assert pq.ParquetFile(tmp_path / "one_group.parquet").num_row_groups == 1
    (source,) = discover([str(tmp_path / "one_group.parquet")], "text", "id", tmp_path, False, None)
    parts, documents = validate_input(source, partition_rows=16)
    assert documents == 100 and len(parts) == 7 and all(13 <= p.rows <= 16 for p in parts)
    frame = pd.concat([read_partition(p) for p in parts], ignore_index=True)
    assert frame.id.tolist() == rows.id.tolist() and frame.text.tolist() == rows.text.tolist()

    (limited,) = discover([str(tmp_path / "one_group.parquet")], "text", "id", tmp_path, False, 20)
    parts, documents = validate_input(limited, partition_rows=16)
    assert documents == 100 and [(p.start, p.stop) for p in parts] == [(0, 14), (14, 20)]
    assert pd.concat([read_partition(p) for p in parts]).id.tolist() == rows.id.tolist()[:20]


def test_small_row_groups_are_gathered_whole_and_large_ones_cut(tmp_path: Path) -> None:
    rows = pd.DataFrame({"text": [f"document {i}" for i in range(60)]})
    table = pa.Table.from_pandas(rows)
    with pq.ParquetWriter(tmp_path / "groups.parquet", table.schema) as writer:
        for start, stop in ((0, 5), (5, 10), (10, 50), (50, 60)):  # groups of 5, 5, 40, 10 rows
            writer.write_table(table.slice(start, stop - start))
    (source,) = discover([str(tmp_path / "groups.parquet")], "text", "id", tmp_path, False, None)
    parts, _ = validate_input(source, partition_rows=16)
    assert [(p.start, p.stop) for p in parts] == [(0, 10), (10, 23), (23, 36), (36, 50), (50, 60)]
    assert [p.row_groups for p in parts] == [(0, 1), (2,), (2,), (2,), (3,)]
    frame = pd.concat([read_partition(p) for p in parts], ignore_index=True)
    assert frame.text.tolist() == rows.text.tolist()
