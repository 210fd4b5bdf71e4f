"""The training loop end to end on a tiny model: phases, outputs, exact resume, DDP env, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import TrainError
from pipeline.lineage import LineageError
from pipeline.train.compare import compare
from pipeline.train.evals import read_metrics
from pipeline.train.loop import train
from tests.train.conftest import tiny_config, tiny_overrides, write_run


def _train_losses(folder):
    return [(r["step"], r["loss"]) for r in read_metrics(folder / "metrics.jsonl") if r["kind"] == "train"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Phase 1, phase 2 (with unequal weights) and SFT run once for the module (tokens are cached
    between phases)."""
    run_dir = write_run(tmp_path_factory.mktemp("trained") / "run")
    cfg = tiny_config(run_dir, "train.phase2.mixture={web_top_edu: 0.7, synthetic: 0.3}")
    for phase in ("1", "2", "sft"):
        assert train(cfg, phase) == 0
    return cfg


@pytest.mark.slow
def test_loss_goes_down_in_phase_1(trained):
    folder = trained.run_dir / "checkpoints" / "phase1"
    losses = [loss for _, loss in _train_losses(folder)]
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    val = [r for r in read_metrics(folder / "metrics.jsonl") if r["kind"] == "eval" and r["domain"] == "web"]
    assert [r["step"] for r in val] == [0, 10, 20] and val[-1]["loss"] < val[0]["loss"]


def test_each_phase_leaves_a_loadable_checkpoint_and_a_summary(trained):
    for phase in ("phase1", "phase2", "sft"):
        folder = trained.run_dir / "checkpoints" / phase
        summary = json.loads((folder / "train_summary.json").read_text())
        assert summary["steps_done"] == summary["steps"] > 0
        assert sum(summary["tokens_per_source"].values()) == summary["tokens"]
        assert set(summary["final_val"]) >= {"web", "textbook", "chat"}
        assert all(0 < v["bpb"] < 20 for v in summary["final_val"].values())
        assert summary["tokens_per_s"] > 0 and summary["mfu"] is None  # CPU: no MFU
        assert (folder / "loss.png").stat().st_size > 1000
        assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert (trained.run_dir / "tokenizer" / "tokenizer.json").exists()
    p2 = json.loads((trained.run_dir / "checkpoints/phase2/train_summary.json").read_text())
    assert p2["init_from"].endswith("phase1") and set(p2["tokens_per_source"]) == {"web_top_edu", "synthetic"}
    # 40 rows at 0.7/0.3: the exact shares, not a draw that lands anywhere from 60/40 to 80/20
    assert p2["tokens_per_source"] == {"web_top_edu": 28 * 32, "synthetic": 12 * 32}
    assert p2["token_shares"] == pytest.approx({"web_top_edu": 0.7, "synthetic": 0.3}, abs=0.01)
    sft = trained.run_dir / "checkpoints" / "sft"
    model = AutoModelForCausalLM.from_pretrained(sft)
    tok = AutoTokenizer.from_pretrained(sft)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Why is the sky blue?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert "sft_assistant" in json.loads((sft / "train_summary.json").read_text())["final_val"]


@pytest.mark.slow
def test_compare_over_two_seeds_reports_the_spread_and_judges_differences_against_it(trained, tmp_path, capsys):
    from tests.eval.test_eval import write_mc

    tasks = json.dumps([{"name": "facts", "path": str(write_mc(tmp_path / "facts.jsonl", 40)), "format": "mc_jsonl",
                         "max_items": 40}])
    cfg = trained.model_copy(update={"eval": load_config(None, [f"eval.tasks={tasks}"]).eval})
    assert compare(cfg) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("=== arm")]
    assert lines[0] == "=== arm 'with_synthetic', seed 0 (run 1 of 4) ==="  # k of N, then the time left
    assert re.fullmatch(r"=== arm 'web_only', seed 1 \(run 4 of 4, ~\d+ s left\) ===", lines[3]), lines
    out = trained.run_dir / "compare"
    table = json.loads((out / "compare.json").read_text())
    assert table["baseline"] == "with_synthetic" and table["seeds"] == 2
    assert {a["tokens"] for a in table["arms"].values()} == {1280}  # same budget for both arms
    for arm in table["arms"].values():
        assert len(arm["score"]["values"]) == 2 and arm["seeds"] == [trained.seed, trained.seed + 1]
        web = arm["bpb"]["web"]
        assert web["min"] <= web["mean"] <= web["max"] and len(web["values"]) == 2
    # two seeds are two data orders: the runs differ, so the spread is a real one
    assert any(a["bpb"]["web"]["max"] > a["bpb"]["web"]["min"] for a in table["arms"].values())
    d = table["differences"]["web_only"]["bpb"]["web"]
    arms = table["arms"]
    assert d["diff"] == pytest.approx(arms["web_only"]["bpb"]["web"]["mean"] - arms["with_synthetic"]["bpb"]["web"]["mean"])
    noise = max(a["bpb"]["web"]["max"] - a["bpb"]["web"]["min"] for a in arms.values())
    assert d["noise"] == pytest.approx(noise) and d["beyond_noise"] == (abs(d["diff"]) > noise)
    evals = [json.loads((out / a / f"seed-{k}" / "eval.json").read_text()) for a in arms for k in (0, 1)]
    assert len({e["bundle_digest"] for e in evals}) == 1 and table["bundle_digest"] == evals[0]["bundle_digest"]
    md = (out / "compare.md").read_text()
    assert "| web |" in md and "noise" in md and (out / "compare.png").stat().st_size > 0
    stamp = (out / "web_only" / "seed-1" / "eval.json").stat().st_mtime_ns
    assert compare(cfg) == 0  # reused: same checkpoints, same bundle
    assert (out / "web_only" / "seed-1" / "eval.json").stat().st_mtime_ns == stamp


def test_compare_checks_its_eval_tasks_and_arms_before_training_any(trained, tmp_path, capsys):
    """At scale an arm is GPU hours: a task that cannot load is found before the first one trains."""
    before = sorted((trained.run_dir / "compare").rglob("*")) if (trained.run_dir / "compare").exists() else []
    args = ["compare", *tiny_overrides(trained.run_dir), "train.phase2.mixture={web_top_edu: 0.7, synthetic: 0.3}"]
    missing = tmp_path / "facts.jsonl"
    assert main([*args, f"eval.tasks=[{{name: facts, path: {missing}, format: mc_jsonl}}]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"eval task 'facts': {missing}: no input files match" in err
    assert main([*args, "train.compare.arms={a: {web: 1.0}, b: {nosuch: 1.0}}"]) == 2
    assert "train.compare.arms.b.nosuch': unknown source" in capsys.readouterr().err
    after = sorted((trained.run_dir / "compare").rglob("*")) if (trained.run_dir / "compare").exists() else []
    assert after == before  # no arm trained, nothing written


@pytest.mark.slow
def test_ctrl_c_says_training_resumes_from_the_latest_saved_state(tmp_path):
    import signal
    import time

    run_dir = write_run(tmp_path / "run")
    args = [sys.executable, "-m", "pipeline", "train", "--phase", "1",
            *tiny_overrides(run_dir, "train.phase1.tokens=2560000", "train.checkpoint_every=2")]
    proc = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    state = run_dir / "checkpoints" / "phase1" / "state"
    deadline = time.monotonic() + 300
    while not (state / "step-000002").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == ("interrupted: training resumes from the latest saved state (every "
                                            "train.checkpoint_every steps); rerun the same command to resume")


def test_synthetic_share_sweep_preset():
    arms = load_config(None, ["train.compare.sweep=synthetic_share"]).train.compare.resolved_arms()
    assert list(arms) == ["synthetic_0", "synthetic_25", "synthetic_50", "synthetic_75"]
    assert arms["synthetic_0"] == {"web_top_edu": 1.0} and arms["synthetic_75"] == {"web_top_edu": 0.25, "synthetic": 0.75}


@pytest.mark.slow
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    whole = tiny_config(write_run(tmp_path / "whole"), "train.phase1.tokens=1536", "train.phase1.grad_accum=2",
                        "train.phase1.batch_size=2")
    train(whole, "1")
    parts = tiny_config(write_run(tmp_path / "parts"), "train.phase1.tokens=1536", "train.phase1.grad_accum=2",
                        "train.phase1.batch_size=2", "train.stop_at_step=8")
    train(parts, "1")
    state = parts.run_dir / "checkpoints" / "phase1" / "state"
    assert sorted(p.name for p in state.iterdir()) == ["lineage.json", "step-000005", "step-000008"]
    shutil.rmtree(state / "step-000008")  # a crash after step 8: resume from step 5 and redo 6..8
    train(parts.model_copy(update={"train": parts.train.model_copy(update={"stop_at_step": None})}), "1")
    expected = _train_losses(whole.run_dir / "checkpoints" / "phase1")
    assert [s for s, _ in expected] == list(range(1, 13))
    assert _train_losses(parts.run_dir / "checkpoints" / "phase1") == expected  # bitwise equal floats
    a = AutoModelForCausalLM.from_pretrained(whole.run_dir / "checkpoints" / "phase1").state_dict()
    b = AutoModelForCausalLM.from_pretrained(parts.run_dir / "checkpoints" / "phase1").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_torchrun_with_two_processes_shards_the_batch_and_only_rank_0_writes(trained, tmp_path):
    """2 ranks x 2 rows per step must train exactly like 1 process x 4 rows: each rank reads its own
    rows of the mixture plan and DDP averages the gradients (both ranks on the same rows would not)."""
    run_dir = write_run(tmp_path / "run")
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
           "-m", "pipeline", "train", "--phase", "1", f"run_dir={run_dir}", "train.seq_len=32",
           "train.tokenizer.vocab_size=400", "train.phase1.tokens=2560", "train.phase1.batch_size=2",
           "train.phase1.warmup_steps=2", "train.eval_every=10", "train.eval_sequences=4",
           "train.checkpoint_every=5", "train.val_fraction=0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = run_dir / "checkpoints" / "phase1"
    summary = json.loads((folder / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_done"] == 20 and summary["tokens_per_step"] == 128
    single = _train_losses(trained.run_dir / "checkpoints" / "phase1")
    both = _train_losses(folder)
    assert [s for s, _ in both] == [s for s, _ in single] == list(range(1, 21))  # one writer: no duplicates
    assert [loss for _, loss in both] == pytest.approx([loss for _, loss in single], rel=1e-3)
    assert len(list((folder / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (folder / "state").iterdir()) == ["lineage.json", "step-000015", "step-000020"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    single_model = AutoModelForCausalLM.from_pretrained(trained.run_dir / "checkpoints" / "phase1")
    for k, v in single_model.state_dict().items():
        assert torch.allclose(model.state_dict()[k], v, atol=1e-3), k


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.sources.web.paths=[]"], r"train.sources.web.paths': the source is empty"),
    (["train.sources.web.paths=['{run_dir}/missing/part-*.parquet']"], r"missing/part-\*.parquet: no input files"),
    (["train.tokenizer.vocab_size=100"], r"vocab_size': 100 is too small"),
    (["train.model.max_position_embeddings=16"], r"train.seq_len': 32 is above the model's maximum"),
    (["train.phase1.mixture={web: 0.0}"], r"train.phase1.mixture': weights .* sum to a positive number"),
    (["train.phase1.mixture={web: -1.0, synthetic: 2.0}"], r"train.phase1.mixture.web': weight -1.0"),
    (["train.phase1.mixture={nosuch: 1.0}"], r"train.phase1.mixture.nosuch': unknown source"),
    (["train.phase1.tokens=10"], r"train.phase1.tokens': budget 10 is less than one step"),
])
def test_bad_input_fails_before_anything_is_built(run_dir, overrides, message):
    cfg = tiny_config(run_dir, *overrides)
    with pytest.raises(TrainError, match=message):
        train(cfg, "1")
    assert sorted(p.name for p in run_dir.iterdir()) == ["filtered", "generated"]  # no tokenizer, tokens, steps


def test_sft_with_an_unimportable_parser_fails_before_anything_is_built(run_dir):
    with pytest.raises(TrainError, match=r"train.sft.parser': cannot import 'nosuch.module:parse'"):
        train(tiny_config(run_dir, "train.sft.parser=nosuch.module:parse"), "sft")
    assert sorted(p.name for p in run_dir.iterdir()) == ["filtered", "generated"]


def test_restart_checks_the_sources_before_it_discards_the_trained_phase(trained, tmp_path, capsys):
    """--restart with a chat file missing its text column: the SFT checkpoint it would replace stays."""
    import pandas as pd

    from pipeline.io import write_parquet

    bad = write_parquet(pd.DataFrame({"id": ["a", "b"], "body": ["Student: Hi?", "Teacher: Hello."]}),
                        tmp_path / "chats.parquet")
    sft = trained.run_dir / "checkpoints" / "sft"
    before = {p.name: p.read_bytes() for p in sft.iterdir() if p.is_file()}
    args = ["train", "--phase", "sft", "--restart", *tiny_overrides(trained.run_dir),
            "train.phase2.mixture={web_top_edu: 0.7, synthetic: 0.3}", f"train.sources.chat.paths=[{bad}]",
            "train.sources.chat.filters=[]"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{bad}: source 'chat' needs column 'text'" in err and "(has: id, body)" in err
    assert {p.name: p.read_bytes() for p in sft.iterdir() if p.is_file()} == before


def test_a_tokenizer_built_with_other_settings_is_not_reused(trained):
    changed = trained.model_copy(update={"train": trained.train.model_copy(
        update={"tokenizer": trained.train.tokenizer.model_copy(update={"vocab_size": 512})})})
    with pytest.raises(LineageError, match=r"tokenizer: the tokenizer was built from other inputs \(config "
                                           r"train.tokenizer.vocab_size was 400, now 512\); use a new run_dir, "
                                           r"or rerun with --restart"):
        train(changed, "1")
    manifest = json.loads((trained.run_dir / "tokenizer" / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == 400 and manifest["vocab"] == 400


def test_cli_phase_2_without_phase_1_is_a_one_line_error(run_dir, capsys):
    assert main(["train", "--phase", "2", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "run `textbook train --phase 1` first" in err and "\n" not in err
