"""Input discovery and partitions: ids kept or made stably, JSONL/Parquet cut into resumable shards."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.filter.inputs import GENERATED, discover, document_id, read_partition, validate


def test_jsonl_partitions_cover_every_row_once_with_blank_lines_and_gzip(tmp_path: Path) -> None:
    rows = [{"id": f"d{i}", "text": f"document number {i}"} for i in range(23)]
    body = "".join(json.dumps(r) + ("\n\n" if i % 5 == 0 else "\n") for i, r in enumerate(rows))
    (tmp_path / "a.jsonl").write_text(body)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(body.encode()))
    for source in discover([str(tmp_path / "*.jsonl*")], "text", "id", tmp_path, True, None):
        parts = validate(source, partition_rows=10)
        assert [(p.start, p.stop) for p in parts] == [(0, 10), (10, 20), (20, 23)]
        frame = pd.concat([read_partition(p) for p in parts], ignore_index=True)
        assert frame.id.tolist() == [r["id"] for r in rows] and (frame.source == source.label).all()


def test_missing_ids_are_made_from_source_and_row_and_are_stable(tmp_path: Path) -> None:
    pd.DataFrame({"text": ["alpha", None, "gamma"]}).to_parquet(tmp_path / "x.parquet")
    (source,) = discover([str(tmp_path / "x.parquet")], "text", "id", tmp_path, True, None)
    (part,) = validate(source, 100)
    frame = read_partition(part)
    assert frame.id.tolist() == [document_id(str(tmp_path / "x.parquet"), r) for r in range(3)]
    assert frame.id.nunique() == 3 and frame.text.tolist() == ["alpha", "", "gamma"]
    assert read_partition(part).id.tolist() == frame.id.tolist()


def test_generated_shards_are_included_with_their_own_columns_and_a_limit_applies(tmp_path: Path) -> None:
    (tmp_path / "generated").mkdir()
    pd.DataFrame({"id": ["g0", "g1"], "text": ["one", "two"]}).to_parquet(tmp_path / "generated" / "part-00000.parquet")
    (tmp_path / "web.jsonl").write_text("".join(json.dumps({"body": f"web {i}"}) + "\n" for i in range(5)))
    sources = discover([str(tmp_path / "web.jsonl")], "body", "url", tmp_path, True, 3)
    assert [s.label for s in sources] == [str(tmp_path / "web.jsonl"), GENERATED]
    frames = [read_partition(p) for s in sources for p in validate(s, 100)]
    assert [len(f) for f in frames] == [3, 2] and frames[1].id.tolist() == ["g0", "g1"]
    assert discover([str(tmp_path / "web.jsonl")], "body", "url", tmp_path, False, None)[-1].label != GENERATED


def test_a_streamed_hub_dataset_needs_a_limit(tmp_path: Path) -> None:
    (source,) = discover(["someone/some-dataset"], "text", "id", tmp_path, False, None)
    with pytest.raises(DataError, match="someone/some-dataset: .*set filter.limit"):
        validate(source, 100)
