"""Shared I/O: atomic writes, input discovery and streaming with errors that name the file."""

import gzip
import json

import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.io import expand_inputs, iter_batches, list_shards, read_shards, shard_path, write_parquet


def test_parquet_is_written_atomically_and_read_back(tmp_path):
    df = pd.DataFrame({"id": ["a", "b"], "text": ["x", "y"]})
    write_parquet(df, shard_path(tmp_path, 0))
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.parquet"]  # no temporary file left
    assert list_shards(tmp_path) == [tmp_path / "part-00000.parquet"]
    pd.testing.assert_frame_equal(read_shards(tmp_path), df)


def test_jsonl_streams_in_batches_with_a_limit(tmp_path):
    path = tmp_path / "web.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(25):
            f.write(json.dumps({"id": str(i), "text": f"doc {i}", "extra": i}) + "\n")
    [source] = expand_inputs([str(tmp_path / "*.jsonl.gz")])
    batches = list(iter_batches(source, ["id", "text"], batch_size=10, limit=22))
    assert [len(b) for b in batches] == [10, 10, 2]
    assert list(batches[0].columns) == ["id", "text"]


def test_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"id": 2}\n')
    [source] = expand_inputs([str(bad)])
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing column 'text'"):
        list(iter_batches(source, ["text"]))
    bad.write_text('{"text": "ok"}\n{"text": "a" "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2:14: invalid JSON"):  # line and column, as YAML errors
        list(iter_batches(source, ["text"]))
    with pytest.raises(DataError, match="no input files match"):
        expand_inputs([str(tmp_path / "missing-*.parquet")])
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(DataError, match="unsupported input format"):
        expand_inputs([str(tmp_path / "x.csv")])


def test_a_hub_dataset_id_is_recognised():
    [source] = expand_inputs(["HuggingFaceFW/fineweb-edu"])
    assert source.kind == "hf_dataset"


def test_written_files_follow_the_umask(tmp_path):
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import write_json, write_parquet, write_png, write_text

    old = os.umask(0o022)
    try:
        written = [write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "p.parquet"),
                   write_json({"a": 1}, tmp_path / "m.json"), write_text("x", tmp_path / "t.md"),
                   write_png(plt.figure(), tmp_path / "f.png")]
        assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}
        os.umask(0o077)
        assert write_json({"a": 2}, tmp_path / "m.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
