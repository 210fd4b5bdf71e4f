"""Bad input: a clear one-line error naming the file, nothing written; or skipped and reported."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import DataError, FilterError
from pipeline.filter.runner import run_filter
from tests.filter.conftest import write_jsonl
from tests.filters.corpus import documents

DOCS = documents(6, seed=11)


def config(tmp_path: Path, inputs: list[Path], *extra: str):
    return load_config(None, [f"run_dir={tmp_path / 'run'}", f"filter.input=[{', '.join(map(str, inputs))}]",
                              "filter.quality.enabled=false", "filter.minhash.enabled=false", *extra])


def good_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "good.jsonl", [{"id": f"g{i}", "text": t} for i, t in enumerate(DOCS)])


def corrupt_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"PAR1" + b"\x00garbage" * 100 + b"PAR1")
    return path


def corrupt_page(tmp_path: Path) -> Path:
    """A snappy Parquet file whose footer is valid but whose id column has garbage inside a page:
    only reading that page finds it (the text column reads fine)."""
    path = tmp_path / "corrupt_page.parquet"
    ids = [f"doc-{i}-{random.Random(i).getrandbits(64):x}" for i in range(300)]
    pq.write_table(pa.table({"id": ids, "text": DOCS * 50}), path, compression="snappy")
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)
    assert chunk.path_in_schema == "id" and chunk.compression == "SNAPPY"
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    middle = start + chunk.total_compressed_size // 2
    data[middle:middle + 64] = bytes(b ^ 0x5A for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    assert pq.read_table(path, columns=["text"]).num_rows == 300
    return path


def invalid_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"text": DOCS[0]}).encode() + b"\n" + b'{"text": "caf\xe9 au lait"}\n')
    return path


def missing_column(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "body.jsonl", [{"body": DOCS[0]}])


def truncated_gzip(tmp_path: Path) -> Path:
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(json.dumps({"text": DOCS[0]}).encode() * 50)[:60])
    return path


@pytest.mark.parametrize(("make", "message"), [
    (corrupt_parquet, "corrupt.parquet: cannot read Parquet"),
    (corrupt_page, "corrupt_page.parquet: cannot read Parquet"),
    (invalid_utf8, "latin1.jsonl:2: invalid UTF-8"),
    (missing_column, "body.jsonl:1: missing text column 'text'"),
    (truncated_gzip, "cut.jsonl.gz: cannot read JSONL"),
])
@pytest.mark.slow
def test_a_bad_file_stops_the_run_before_any_output(tmp_path: Path, cluster: str, make, message: str) -> None:
    bad = make(tmp_path)
    with pytest.raises(DataError, match=message) as e:
        run_filter(config(tmp_path, [good_file(tmp_path), bad]), scheduler=cluster)
    assert "\n" not in str(e.value) and "nothing was written" in str(e.value)
    assert not (tmp_path / "run" / "filtered").exists()


def test_bad_files_are_skipped_and_reported_when_asked(tmp_path: Path, cluster: str) -> None:
    cfg = config(tmp_path, [good_file(tmp_path), corrupt_parquet(tmp_path), corrupt_page(tmp_path),
                            invalid_utf8(tmp_path)], "filter.on_bad_file=skip")
    assert run_filter(cfg, scheduler=cluster) == 0
    stats = json.loads((tmp_path / "run" / "filtered" / "stats.json").read_text())
    assert sorted(Path(b["path"]).name for b in stats["bad_files"]) == ["corrupt.parquet", "corrupt_page.parquet",
                                                                        "latin1.jsonl"]
    assert stats["documents_in"] == len(DOCS)


def test_cli_prints_one_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["filter", f"run_dir={tmp_path / 'run'}", f"filter.input=[{good_file(tmp_path)}]"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: filter.quality: no edu classifier at") and "train-classifier" in err


def test_no_inputs_at_all_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FilterError, match="nothing to filter"):
        run_filter(load_config(None, [f"run_dir={tmp_path}", "filter.quality.enabled=false"]))


def test_an_unknown_benchmark_without_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="not a preset"):
        load_config(None, ["filter.decontaminate.benchmarks=[{name: mybench}]"])


def test_an_unreachable_hub_file_is_one_line_naming_it_and_writes_nothing(tmp_path: Path, cluster: str) -> None:
    # the suite runs with HF_HUB_OFFLINE=1: the Hub cannot be reached, as on a machine without network
    hub = "hf://datasets/someone/web-sample/data/part-0.parquet"
    with pytest.raises(DataError, match=f"^{hub}: ") as e:
        run_filter(config(tmp_path, [good_file(tmp_path), hub], "filter.limit=10"), scheduler=cluster)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "filtered").exists()
