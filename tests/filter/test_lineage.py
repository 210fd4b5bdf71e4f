"""What made the filter's outputs: the lineage in filtered/manifest.json, and stored scores that are
never served for other content or other settings."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from filters.minhash import signature_scheme
from pipeline.config import load_config, public_dict
from pipeline.errors import PipelineError
from pipeline.filter.runner import run_filter
from pipeline.io import list_shards, read_shards
from pipeline.lineage import LineageError, content_digest, file_digests, manifest_ref
from tests.filter.conftest import write_jsonl
from tests.filters.corpus import documents

DOCS = documents(8, seed=17)


def config(tmp_path: Path, inputs: list[Path], *extra: str):
    return load_config(None, [f"run_dir={tmp_path / 'run'}", f"filter.input=[{', '.join(map(str, inputs))}]",
                              "filter.quality.enabled=false", "filter.minhash.enabled=false",
                              "filter.include_generated=false", *extra])


def manifest(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "filtered" / "manifest.json").read_text())


def shards_on_disk(tmp_path: Path) -> dict[str, str]:
    out = tmp_path / "run" / "filtered"
    return file_digests([*list_shards(out), *list_shards(out / "rejected")], tmp_path / "run")


@pytest.mark.light
def test_the_manifest_names_the_inputs_parents_and_outputs(planted: dict, cluster: str, edu_model: Path) -> None:
    run = planted["run"]
    (run / "generated" / "manifest.json").write_text('{"stage": "generate"}')
    (run / "classifier").mkdir()
    shutil.copy(edu_model, run / "classifier" / "edu_fasttext.bin")  # the run's own classifier
    (run / "classifier" / "manifest.json").write_text(json.dumps(
        {"stage": "train-classifier", "outputs": {"classifier/edu_fasttext.bin": content_digest(edu_model)}}))
    cfg = load_config(None, [*planted["overrides"], "filter.quality.model=null"])
    assert run_filter(cfg, scheduler=cluster) == 0

    lineage = manifest(planted["root"])["lineage"]
    filter_section = {k: v for k, v in public_dict(cfg.filter).items() if k != "worker_wait_s"}  # shapes no output
    assert lineage["config"] == {"filter": filter_section, "seed": cfg.seed}
    web, more = planted["root"] / "web.jsonl", planted["root"] / "more.parquet"
    assert {k: v for k, v in lineage["inputs"].items() if k != "decontaminate.benchmarks"} == {
        str(web): content_digest(web), str(more): content_digest(more),
        "generated/part-00000.parquet": content_digest(run / "generated" / "part-00000.parquet"),
        "classifier/edu_fasttext.bin": content_digest(edu_model)}
    assert lineage["parents"] == {"generated": manifest_ref(run / "generated" / "manifest.json", run),
                                  "classifier": manifest_ref(run / "classifier" / "manifest.json", run)}
    outputs = manifest(planted["root"])["outputs"]
    assert outputs == shards_on_disk(planted["root"]) and any(k.startswith("filtered/rejected/") for k in outputs)


def test_a_classifier_that_no_longer_matches_its_manifest_stops_before_scoring(planted: dict, cluster: str,
                                                                                edu_model: Path) -> None:
    run = planted["run"]
    (run / "classifier").mkdir()
    shutil.copy(edu_model, run / "classifier" / "edu_fasttext.bin")
    (run / "classifier" / "manifest.json").write_text(json.dumps(
        {"stage": "train-classifier", "outputs": {"classifier/edu_fasttext.bin": "0" * 16}}))
    cfg = load_config(None, [*planted["overrides"], "filter.quality.model=null"])
    with pytest.raises(LineageError, match=r"classifier/edu_fasttext\.bin: does not match"):
        run_filter(cfg, scheduler=cluster)
    assert not (run / "filtered" / "scored").exists()


def test_restart_discards_the_stored_scores(tmp_path: Path, cluster: str, capsys: pytest.CaptureFixture) -> None:
    cfg = config(tmp_path, [write_jsonl(tmp_path / "web.jsonl", [{"text": t} for t in DOCS])])
    run_filter(cfg, scheduler=cluster)
    scored = tmp_path / "run" / "filtered" / "scored" / "part-00000.parquet"
    stamp = scored.stat().st_mtime_ns
    capsys.readouterr()
    assert run_filter(cfg, scheduler=cluster, restart=True) == 0
    said = capsys.readouterr().out
    assert "up to date" not in said and "already scored" not in said and scored.stat().st_mtime_ns != stamp
    assert manifest(tmp_path)["outputs"] == shards_on_disk(tmp_path)


def test_outputs_that_no_longer_match_the_manifest_are_rebuilt(tmp_path: Path, cluster: str,
                                                              capsys: pytest.CaptureFixture) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": t} for i, t in enumerate(DOCS[:4])])
    second = write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "text": t} for i, t in enumerate(DOCS[4:])])
    run_filter(config(tmp_path, [first, second]), scheduler=cluster)
    (tmp_path / "run" / "filtered" / "part-00000.parquet").unlink()
    capsys.readouterr()
    run_filter(config(tmp_path, [first, second]), scheduler=cluster)
    assert "up to date" not in capsys.readouterr().out
    assert len(read_shards(tmp_path / "run" / "filtered")) == 8

    run_filter(config(tmp_path, [first]), scheduler=cluster)  # an input dropped: none of its outputs stay
    assert set(read_shards(tmp_path / "run" / "filtered").id) == {f"a{i}" for i in range(4)}
    assert manifest(tmp_path)["outputs"] == shards_on_disk(tmp_path)
    assert list(manifest(tmp_path)["lineage"]["inputs"]) == [str(first)]


def test_minhash_outputs_name_the_signature_scheme(tmp_path: Path, cluster: str) -> None:
    # the same seed gives other signatures under another rensa algorithm: the lineage says which made them
    docs = write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": t} for i, t in enumerate(DOCS)])
    run_filter(config(tmp_path, [docs], "filter.minhash.enabled=true"), scheduler=cluster)
    inputs = manifest(tmp_path)["lineage"]["inputs"]
    assert inputs == {str(docs): content_digest(docs), "minhash.signatures": signature_scheme()}
    assert signature_scheme().startswith("rensa 0.5.")


def test_stored_scores_follow_the_text_column(tmp_path: Path, cluster: str) -> None:
    web = write_jsonl(tmp_path / "web.jsonl", [{"id": f"d{i}", "text": DOCS[i], "body": DOCS[i + 4]}
                                               for i in range(4)])
    run_filter(config(tmp_path, [web]), scheduler=cluster)
    run_filter(config(tmp_path, [web], "filter.text_column=body"), scheduler=cluster)
    assert sorted(read_shards(tmp_path / "run" / "filtered").text) == sorted(DOCS[4:8])


def test_an_input_changed_in_place_is_rescored_whatever_its_size_and_mtime(tmp_path: Path, cluster: str) -> None:
    # The change lies past the first and before the last MiB, and the size and mtime are kept:
    # only the content tells the two files apart.
    page = "word " * 300_000  # 1.5 MB: rejected by length, never scored for n-grams
    rows = [{"id": "head", "text": page}, {"id": "middle", "text": DOCS[0]}, {"id": "tail", "text": page}]
    web = write_jsonl(tmp_path / "web.jsonl", rows)
    run_filter(config(tmp_path, [web]), scheduler=cluster)
    before = web.stat()
    changed = DOCS[0].replace("the", "teh", 1)
    write_jsonl(web, [rows[0], {"id": "middle", "text": changed}, rows[2]])
    os.utime(web, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert web.stat().st_size == before.st_size
    run_filter(config(tmp_path, [web]), scheduler=cluster)
    assert read_shards(tmp_path / "run" / "filtered").text.tolist() == [changed]


def test_shards_scored_by_a_run_that_died_before_the_merge_are_not_scored_again(tmp_path: Path, cluster: str,
                                                                                capsys: pytest.CaptureFixture) -> None:
    # each scoring task writes its shard's entry beside it; the driver merges them into the manifest once
    docs = [write_jsonl(tmp_path / f"web{k}.jsonl", [{"id": f"w{k}-{i}", "text": t} for i, t in enumerate(DOCS)])
            for k in range(3)]
    cfg = config(tmp_path, docs)
    run_filter(cfg, scheduler=cluster)
    scored = tmp_path / "run" / "filtered" / "scored"
    merged = json.loads((scored / "manifest.json").read_text())
    assert sorted(merged["shards"]) == [p.name for p in list_shards(scored)]
    assert [p.name for p in scored.glob("*.json")] == ["manifest.json"]  # the entries, merged, are gone
    # as a driver killed after shard 1's task finished and before the merge leaves it
    entry = merged["shards"].pop("part-00001.parquet")
    (scored / "manifest.json").write_text(json.dumps(merged))
    (scored / "part-00001.json").write_text(json.dumps(entry))
    stamps = {p.name: p.stat().st_mtime_ns for p in list_shards(scored)}
    capsys.readouterr()
    run_filter(cfg, scheduler=cluster)
    assert "3/3 shards already scored" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in list_shards(scored)} == stamps
    assert json.loads((scored / "manifest.json").read_text())["shards"]["part-00001.parquet"] == entry
    assert [p.name for p in scored.glob("*.json")] == ["manifest.json"]


def test_restart_validates_the_inputs_before_it_discards_the_scores(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": t} for i, t in enumerate(DOCS)])
    assert run_filter(config(tmp_path, [good])) == 0
    scored = tmp_path / "run" / "filtered" / "scored"
    kept = {p.name: p.read_bytes() for p in scored.rglob("*") if p.is_file()}
    before = manifest(tmp_path)
    broken = tmp_path / "b.jsonl"
    broken.write_bytes(b'{"id": "b0", "text": "fine"}\n{"id": "b1", "text": "\xff\xfe"}\n')
    with pytest.raises(PipelineError, match=r"b\.jsonl:2"):
        run_filter(config(tmp_path, [good, broken]), restart=True)
    assert {p.name: p.read_bytes() for p in scored.rglob("*") if p.is_file()} == kept
    assert manifest(tmp_path) == before
