"""Lineage of the tokenizer, the phases and the compare arms: a rerun resumes or reuses only what was
built from the same shards, settings and upstream manifests; --restart discards the rest."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from pipeline.cli import main
from pipeline.io import read_parquet, shard_path, write_json, write_parquet
from pipeline.lineage import LineageError, content_digest
from pipeline.train.compare import compare
from pipeline.train.evals import read_metrics
from pipeline.train.loop import train
from tests.train.conftest import document, tiny_config, tiny_overrides, write_run

CHANGED = r"input filtered/part-00001\.parquet changed\); use a new run_dir, or rerun with --restart to discard it"


def change_web_shard(run_dir: Path, index: int = 1) -> Path:
    """Rewrite one filtered shard with other documents (same ids, same row count)."""
    path = shard_path(run_dir / "filtered", index)
    df = read_parquet(path)
    rng = random.Random(99)
    write_parquet(df.assign(text=[document(rng, 4) for _ in range(len(df))]), path)
    return path


def weights(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_phase_1_on_changed_shards_is_refused_and_restart_retrains(run_dir, capsys):
    phase1 = run_dir / "checkpoints" / "phase1"
    assert main(["train", "--phase", "1", *tiny_overrides(run_dir)]) == 0
    out, err = capsys.readouterr()
    # the end-of-run screen: checkpoint, tokens, time, validation loss and bpb; plain progress lines
    assert f"checkpoint:  {phase1}" in out and "20 steps, 2,560 tokens (web 100.0%) in" in out
    assert "val web:" in out and "loss " in out and "bpb " in out
    assert "\r" not in err and "phase1: 20/20 step (100%)" in err
    old_weights, old_summary = weights(phase1), (phase1 / "train_summary.json").read_bytes()

    changed = change_web_shard(run_dir)
    assert main(["train", "--phase", "1", *tiny_overrides(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and "part-00001.parquet changed" in err
    assert "--restart" in err
    assert weights(phase1) == old_weights and (phase1 / "train_summary.json").read_bytes() == old_summary

    assert main(["train", "--phase", "1", "--restart", *tiny_overrides(run_dir)]) == 0
    assert weights(phase1) != old_weights
    manifest = json.loads((phase1 / "manifest.json").read_text())
    assert manifest["lineage"]["inputs"]["filtered/part-00001.parquet"] == content_digest(changed)
    tokenizer = json.loads((run_dir / "tokenizer" / "manifest.json").read_text())
    assert tokenizer["lineage"]["inputs"]["filtered/part-00001.parquet"] == content_digest(changed)


@pytest.mark.slow
def test_a_stopped_run_does_not_continue_on_changed_data(tmp_path, tiny_llama):
    """With a pretrained tokenizer (no tokenizer lineage in the way), the phase's own check fires;
    --restart then trains exactly like a fresh run on the new data, not from the old step 5."""
    run_dir = write_run(tmp_path / "run")
    pretrained = f"train.tokenizer.pretrained={tiny_llama}"
    train(tiny_config(run_dir, pretrained, "train.stop_at_step=5"), "1")
    state = run_dir / "checkpoints" / "phase1" / "state"
    assert [p.name for p in state.glob("step-*")] == ["step-000005"]
    change_web_shard(run_dir)
    cfg = tiny_config(run_dir, pretrained)
    with pytest.raises(LineageError, match=rf"phase1/state: the saved phase1 training state was built from "
                                           rf"other inputs \({CHANGED}"):
        train(cfg, "1")
    assert [p.name for p in state.glob("step-*")] == ["step-000005"]

    assert train(cfg, "1", restart=True) == 0
    fresh = write_run(tmp_path / "fresh")
    change_web_shard(fresh)
    train(tiny_config(fresh, pretrained), "1")
    a = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "phase1").state_dict()
    b = AutoModelForCausalLM.from_pretrained(fresh / "checkpoints" / "phase1").state_dict()
    assert all(a[k].equal(b[k]) for k in a)
    steps = [r["step"] for r in read_metrics(run_dir / "checkpoints" / "phase1" / "metrics.jsonl")
             if r["kind"] == "train"]
    assert steps == list(range(1, 21))


@pytest.mark.slow
def test_an_unchanged_rerun_reuses_the_checkpoint_and_phase_2_refuses_a_retrained_phase_1(run_dir, capsys):
    cfg = tiny_config(run_dir)
    train(cfg, "1")
    phase1, phase2 = run_dir / "checkpoints" / "phase1", run_dir / "checkpoints" / "phase2"
    manifest = (phase1 / "manifest.json").read_bytes()
    capsys.readouterr()
    assert train(cfg, "1") == 0  # nothing changed: nothing to do, nothing rewritten
    assert "already trained on these inputs" in capsys.readouterr().out
    assert (phase1 / "manifest.json").read_bytes() == manifest
    train(tiny_config(run_dir, "train.stop_at_step=5"), "2")
    train(tiny_config(run_dir, "train.stop_at_step=8"), "2")  # same inputs: resumes from step 5
    assert sorted(p.name for p in (phase2 / "state").glob("step-*")) == ["step-000005", "step-000008"]

    train(tiny_config(run_dir, "train.phase1.lr=0.002"), "1", restart=True)  # phase 1 retrained
    with pytest.raises(LineageError, match=r"phase2/state: the saved phase2 training state was built from other "
                                           r"inputs \(upstream checkpoints/phase1 changed\)"):
        train(cfg, "2")
    train(cfg, "2", restart=True)
    with pytest.raises(LineageError, match=r"phase2: the phase2 checkpoint was built from other inputs "
                                           r"\(config train.phase2.lr was 0.001, now 0.0005\)"):
        train(tiny_config(run_dir, "train.phase2.lr=0.0005"), "2")


@pytest.mark.slow
def test_the_manifest_names_its_parents_and_shards_by_digest(run_dir):
    for stage in ("filtered", "generated"):
        write_json({"stage": stage}, run_dir / stage / "manifest.json")
    cfg = tiny_config(run_dir)
    train(cfg, "1")
    train(cfg, "2")
    p1 = json.loads((run_dir / "checkpoints" / "phase1" / "manifest.json").read_text())["lineage"]
    assert p1["parents"] == {
        "filtered": {"manifest": "filtered/manifest.json", "digest": content_digest(run_dir / "filtered/manifest.json")},
        "tokenizer": {"manifest": "tokenizer/manifest.json",
                      "digest": content_digest(run_dir / "tokenizer/manifest.json")},
    }
    assert p1["inputs"] == {f"filtered/part-0000{i}.parquet": content_digest(shard_path(run_dir / "filtered", i))
                            for i in (0, 1)}
    assert p1["config"]["train.phase1.mixture"] == {"web": 1.0} and p1["config"]["train.seq_len"] == 32
    p2 = json.loads((run_dir / "checkpoints" / "phase2" / "manifest.json").read_text())
    assert p2["lineage"]["parents"]["checkpoints/phase1"] == {
        "manifest": "checkpoints/phase1/manifest.json",
        "digest": content_digest(run_dir / "checkpoints/phase1/manifest.json")}
    assert set(p2["lineage"]["parents"]) == {"checkpoints/phase1", "filtered", "generated"}
    assert "generated/part-00000.parquet" in p2["lineage"]["inputs"]
    assert p2["outputs"]["checkpoints/phase2/model.safetensors"] == content_digest(
        run_dir / "checkpoints/phase2/model.safetensors")


@pytest.mark.slow
def test_a_compare_arm_with_another_mixture_is_refused(run_dir):
    base = ("train.phase1.tokens=1280", "train.phase2.tokens=640", "train.compare.seeds=1", "eval.tasks=[]")
    cfg = tiny_config(run_dir, *base)
    train(cfg, "1")
    assert compare(cfg) == 0
    table = json.loads((run_dir / "compare" / "compare.json").read_text())
    assert set(table["lineage"]["parents"]) == {"with_synthetic/seed-0", "web_only/seed-0"}
    arms = "train.compare.arms={with_synthetic: {web_top_edu: 0.6, synthetic: 0.4}, web_only: {web_top_edu: 1.0}}"
    changed = tiny_config(run_dir, *base, arms)
    with pytest.raises(LineageError, match=r"compare/with_synthetic/seed-0: the phase2-with_synthetic-seed0 checkpoint "
                                           r"was built from other inputs \(config train.compare.arms.with_synthetic."
                                           r"synthetic was 0.5, now 0.4\)"):
        compare(changed)
    web_only = (run_dir / "compare" / "web_only" / "seed-0" / "model.safetensors").read_bytes()
    assert compare(changed, restart=True) == 0
    summary = json.loads((run_dir / "compare" / "with_synthetic" / "seed-0" / "train_summary.json").read_text())
    assert summary["token_shares"] == {"web_top_edu": 0.6, "synthetic": 0.4}
    assert (run_dir / "compare" / "web_only" / "seed-0" / "model.safetensors").read_bytes() == web_only  # reused


def test_tokenizer_sample_notes_a_missing_source_in_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_run(run_dir)
    for f in (run_dir / "generated").iterdir():
        f.unlink()
    (run_dir / "generated").rmdir()
    train(tiny_config(run_dir, "train.phase1.tokens=640"), "1")
    err = capsys.readouterr().err
    assert "note: tokenizer sample skips source 'synthetic': train.sources.synthetic: " in err
    assert "Warning" not in err


def test_every_file_of_a_run_follows_the_umask(tmp_path):
    before = os.umask(0o002)  # a run directory shared with a group (Dask workers)
    try:
        run_dir = write_run(tmp_path / "run")
        cfg = tiny_config(run_dir, "train.phase1.tokens=640")
        train(cfg, "1")
    finally:
        os.umask(before)
    modes = {p.relative_to(run_dir).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in run_dir.rglob("*")}
    assert any(name.endswith(".npy") for name in modes) and "checkpoints/phase1/model.safetensors" in modes
    wrong = {n: oct(m) for n, m in modes.items() if m != (0o775 if (run_dir / n).is_dir() else 0o664)}
    assert not wrong


def test_token_cache_is_keyed_by_content_not_mtime(tmp_path):
    """A shard changed in its middle with the same size and mtime (a copy with preserved times) is
    new data: the cache must not serve the old tokens (its key read the size, mtime and ends only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.sources import RowCondition, SourceConfig
    from pipeline.train.data import packed_source
    from pipeline.train.tokenizer import train_bpe
    from tests.conftest import SENTENCES

    tok = train_bpe(SENTENCES * 10, 300)
    path = tmp_path / "web.parquet"
    filler = "the cat sat " * 100_000  # ~1.1 MiB on each side: the middle document is past the ends a key read
    docs = [filler, " ".join(SENTENCES), filler]

    def write(texts: list[str]) -> None:
        pq.write_table(pa.table({"id": ["a", "b", "c"], "text": texts}), path, compression="none",
                       use_dictionary=False, write_statistics=False)

    write(docs)
    st = path.stat()
    spec = SourceConfig(paths=[str(path)], filters=[RowCondition(column="id", op="==", value="b")])  # no filler
    before = packed_source("web", spec, tmp_path, tok, "bpe", 32, 0.3)
    write([filler, docs[1].replace("Photosynthesis", "Chlorophyllous"), filler])
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = packed_source("web", spec, tmp_path, tok, "bpe", 32, 0.3)
    assert len(before.train) and not (before.train.shape == after.train.shape and (before.train == after.train).all())
