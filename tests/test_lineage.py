"""Lineage: content digests, fingerprints and the resume check every stage makes."""

import json

import pytest

from pipeline.lineage import (
    LineageError,
    check_resume,
    content_digest,
    describe_change,
    file_digests,
    fingerprint,
    manifest_ref,
)


def test_content_digest_follows_bytes_not_mtime(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"hello")
    before = content_digest(a)
    a.touch()
    assert content_digest(a) == before
    a.write_bytes(b"hellp")
    assert content_digest(a) != before


def test_file_digests_are_named_relative_to_the_run(tmp_path):
    shard = tmp_path / "filtered" / "part-00000.parquet"
    shard.parent.mkdir()
    shard.write_bytes(b"x")
    assert list(file_digests([shard], tmp_path)) == ["filtered/part-00000.parquet"]
    outside = tmp_path.parent / "elsewhere.jsonl"
    assert relative_outside(outside, tmp_path)


def relative_outside(path, run_dir):
    from pipeline.lineage import relative_name

    return relative_name(path, run_dir) == str(path)


def test_describe_change_names_the_first_difference():
    old = fingerprint({"lr": 0.003, "mixture": {"web": 1.0}}, {"filtered/part-00000.parquet": "aa"},
                      {"phase1": {"digest": "11"}})
    assert describe_change(old, old) is None
    assert describe_change(old, fingerprint(old["config"], {"filtered/part-00000.parquet": "bb"},
                                            old["parents"])) == "input filtered/part-00000.parquet changed"
    assert describe_change(old, fingerprint(old["config"], {}, old["parents"])) == \
        "input filtered/part-00000.parquet is gone"
    assert describe_change(old, fingerprint(old["config"], old["inputs"], {"phase1": {"digest": "22"}})) == \
        "upstream phase1 changed"
    changed = fingerprint({"lr": 0.001, "mixture": {"web": 1.0}}, old["inputs"], old["parents"])
    assert describe_change(old, changed) == "config lr was 0.003, now 0.001"


def test_check_resume_refuses_restarts_or_passes(tmp_path):
    old = fingerprint({"a": 1}, {"x": "1"})
    assert check_resume("the checkpoint", None, old, restart=False, where=tmp_path)
    assert check_resume("the checkpoint", old, old, restart=False, where=tmp_path)
    new = fingerprint({"a": 1}, {"x": "2"})
    with pytest.raises(LineageError, match=r"input x changed.*--restart"):
        check_resume("the checkpoint", old, new, restart=False, where=tmp_path)
    assert check_resume("the checkpoint", old, new, restart=True, where=tmp_path) is False


def test_manifest_ref_digests_the_manifest(tmp_path):
    m = tmp_path / "generated" / "manifest.json"
    assert manifest_ref(m, tmp_path) is None
    m.parent.mkdir()
    m.write_text(json.dumps({"stage": "generate"}))
    ref = manifest_ref(m, tmp_path)
    assert ref["manifest"] == "generated/manifest.json" and ref["digest"] == content_digest(m)
