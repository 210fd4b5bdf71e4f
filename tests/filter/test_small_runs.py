"""Small inputs run on an in-process cluster and give the very outputs of worker processes; a
single Parquet file is cut so that every worker thread gets a share."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.filter.inputs import Source, read_partition, validate_input
from pipeline.filter.runner import partition_rows, run_filter
from pipeline.io import InputFile, read_shards
from tests.filters.corpus import documents, near_duplicate


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """One Parquet file (one row group) of 40 documents: an exact copy and two near-duplicates planted."""
    docs = documents(36, seed=11)
    texts = docs + [docs[0].upper(), near_duplicate(docs[1], seed=1), near_duplicate(docs[2], seed=2), ""]
    path = tmp_path / "web.parquet"
    pd.DataFrame({"id": [f"d{i:02d}" for i in range(len(texts))], "text": texts}).to_parquet(path)
    return path


def outputs(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    kept = read_shards(run_dir / "filtered").sort_values("id", ignore_index=True)
    rejected = read_shards(run_dir / "filtered" / "rejected").sort_values("id", ignore_index=True)
    return kept, rejected, json.loads((run_dir / "filtered" / "stats.json").read_text())


@pytest.mark.slow
def test_in_process_and_worker_processes_give_the_same_outputs(corpus: Path, tmp_path: Path) -> None:
    base = [f"filter.input=[{corpus}]", "filter.include_generated=false", "filter.quality.enabled=false",
            "filter.language.enabled=false", "workers=2"]
    runs = {}
    for name, extra in (("in-process", []), ("processes", ["filter.in_process=false"])):
        cfg = load_config(None, [*base, f"run_dir={tmp_path / name}", *extra])
        assert run_filter(cfg) == 0
        runs[name] = outputs(tmp_path / name)
    (kept, rejected, stats), (kept_p, rejected_p, stats_p) = runs["in-process"], runs["processes"]
    assert stats["cluster"] == {"kind": "in-process", "threads": 2}
    assert stats_p["cluster"] == {"kind": "processes", "threads": 2}
    pd.testing.assert_frame_equal(kept, kept_p)
    pd.testing.assert_frame_equal(rejected, rejected_p)
    reason = dict(zip(rejected.id, rejected.filter_reason, strict=True))
    assert reason.pop("d36") == "exact_dup" and reason.pop("d39") == "length:empty"
    # one of each near pair is removed (the keep rule picks the longer), the other kept with its cluster
    assert sorted(reason.values()) == ["near_dup", "near_dup"] and len(reason.keys() & {"d01", "d37"}) == 1
    assert len(reason.keys() & {"d02", "d38"}) == 1
    assert kept[kept.id.isin(["d01", "d37", "d02", "d38"])].cluster_size.tolist() == [2, 2]
    # the one file was cut in two partitions, one per thread: two shards scored
    assert len(list((tmp_path / "in-process" / "filtered" / "scored").glob("part-*.parquet"))) == 2
    assert (tmp_path / "in-process" / "filtered" / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert stats["documents_in"] == stats_p["documents_in"] == 40


@pytest.mark.slow
def test_a_run_whose_per_document_work_releases_the_gil_runs_on_threads(corpus: Path, tmp_path: Path) -> None:
    base = [f"filter.input=[{corpus}]", "filter.include_generated=false", "filter.quality.enabled=false",
            "filter.language.enabled=false", "filter.in_process_mb=0", "workers=2"]
    kinds = {}
    for name, extra in (("dedup-only", ["filter.heuristics.enabled=false"]), ("heuristics", [])):
        assert run_filter(load_config(None, [*base, f"run_dir={tmp_path / name}", *extra])) == 0
        kinds[name] = outputs(tmp_path / name)[2]["cluster"]["kind"]
    assert kinds == {"dedup-only": "in-process", "heuristics": "processes"}


def test_partition_rows_gives_every_thread_a_share_of_parquet_inputs(corpus: Path, tmp_path: Path) -> None:
    source = Source(InputFile(str(corpus), "parquet"), "text", "id", str(corpus))
    assert partition_rows([source], 20_000, threads=2) == 20
    assert partition_rows([source], 8, threads=2) == 8  # the configured size is a ceiling
    assert partition_rows([source, source], 20_000, threads=4) == 20
    assert [p.rows for p in validate_input(source, 20)[0]] == [20, 20]
    jsonl = tmp_path / "web.jsonl"
    jsonl.write_text('{"text": "a"}\n')
    other = Source(InputFile(str(jsonl), "jsonl"), "text", "id", str(jsonl))
    assert partition_rows([source, other], 20_000, threads=2) == 20_000  # JSONL rows are unknown up front
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    assert partition_rows([Source(InputFile(str(broken), "parquet"), "text", "id", "b")], 500, 2) == 500


def test_a_small_corpus_is_cut_finer_and_a_large_one_into_partitions_of_partition_mb(tmp_path: Path) -> None:
    """Six partitions per thread while they hold 2 MB or more (smaller tasks hold less at once);
    never more than ``partition_mb`` MB of text in one."""
    path = tmp_path / "web.parquet"
    texts = [f"{i} " + "word " * 2000 for i in range(1300)]  # 13 MB of text, one row group
    pq.write_table(pa.table({"text": texts}), path, use_dictionary=False)
    source = Source(InputFile(str(path), "parquet"), "text", "id", str(path))
    assert partition_rows([source], 20_000, threads=1) == 217  # 6 partitions of 2.2 MB, not 1 of 13 MB
    assert partition_rows([source], 20_000, threads=2) == 217  # 6.5 MB a thread: 3 each, 2 MB at least
    assert partition_rows([source], 20_000, threads=4) == 325  # 3.3 MB a thread: one each
    assert partition_rows([source], 20_000, threads=1, most_mb=1) == 93  # 14 partitions of at most 1 MB
    assert len(validate_input(source, 217)[0]) == 6


def test_a_failed_run_writes_no_report(corpus: Path, tmp_path: Path) -> None:
    cfg = load_config(None, [f"filter.input=[{corpus}]", "filter.include_generated=false", "filter.quality.enabled=false",
                             "filter.language.enabled=false", f"run_dir={tmp_path / 'run'}", "filter.text_column=body"])
    with pytest.raises(Exception, match="body"):
        run_filter(cfg)
    assert not (tmp_path / "run" / "filtered" / "report.png").exists()


def test_validation_copies_read_as_the_source(corpus: Path, tmp_path: Path) -> None:
    """The rows validation keeps for scoring are those a partition reads from the file itself."""
    source = Source(InputFile(str(corpus), "parquet"), "text", "id", str(corpus), limit=35)
    copied, documents = validate_input(source, 12, tmp_path / "copies")
    plain, _ = validate_input(source, 12)
    assert documents == 40 and [p.rows for p in copied] == [10, 10, 10, 5]
    assert all(p.copy and Path(p.copy).is_file() for p in copied) and not any(p.copy for p in plain)
    assert [p.key for p in copied] == [p.key for p in plain]  # stored scores do not depend on the copy
    for a, b in zip(copied, plain, strict=True):
        pd.testing.assert_frame_equal(read_partition(a), read_partition(b))


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_an_empty_input_is_an_error_not_kept_0_of_0(tmp_path: Path, kind: str, capsys) -> None:
    from pipeline.cli import main

    path = tmp_path / f"empty.{kind}"
    if kind == "jsonl":
        path.write_text("")
    else:
        pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(path)
    assert main(["filter", f"run_dir={tmp_path / 'run'}", f"filter.input=[{path}]", "filter.include_generated=false",
                 "filter.quality.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: filter.input: no documents in {path}: nothing to filter (nothing was written)\n"
    assert not (tmp_path / "run" / "filtered").exists()
