"""`textbook status`: each stage of a run directory, what it holds, up to date or stale, what it cost."""

from __future__ import annotations

from pipeline.cli import main
from pipeline.io import read_json, write_json
from tests.conftest import holding_run_dir
from tests.hub.conftest import build_run


def table(out: str) -> dict[str, str]:
    """stage -> its printed row."""
    return {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}


def test_status_shows_each_stage_with_its_state_and_cost(tmp_path, tiny_llama, capsys):
    run = build_run(tmp_path / "run", tiny_llama)
    assert main(["status", f"run_dir={run}"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"run_dir {run}"
    rows = table(out)
    assert list(rows) == ["generate", "annotate", "train-classifier", "filter", "tokenizer", "phase1", "phase2",
                          "sft", "eval", "compare", "card", "push"]
    ledger = read_json(run / "generated" / "manifest.json")["ledger"]
    assert "60 of 62 rows" in rows["generate"] and f"${ledger['cost_usd']:.4f}, 62 requests" in rows["generate"]
    assert "incomplete" in rows["generate"]  # the run's totals say it stopped short
    assert "50 of 120 documents kept" in rows["filter"] and "up to date" in rows["filter"]
    assert "12 steps, 24,576 tokens" in rows["sft"] and "up to date" in rows["sft"] and "16 s" in rows["sft"]
    assert "edu_fasttext.bin (accepted, ROC-AUC" in rows["train-classifier"]
    for stage in ("annotate", "tokenizer", "phase1", "phase2", "eval", "compare", "card", "push"):
        assert "not run" in rows[stage], rows[stage]

    filtered = run / "filtered" / "manifest.json"
    write_json({**read_json(filtered), "documents_out": 49}, filtered)  # the filter reran after training
    assert main(["status", f"run_dir={run}"]) == 0
    assert "stale: filtered/manifest.json changed since" in table(capsys.readouterr().out)["sft"]


def test_status_names_the_process_running_in_the_run_directory(tmp_path, tiny_llama, capsys):
    run = build_run(tmp_path / "run", tiny_llama)
    with holding_run_dir(run, "textbook filter") as pid:
        assert main(["status", f"run_dir={run}"]) == 0  # reads; never waits for the lock
        first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"run_dir {run}: running pid {pid} on ") and "(textbook filter, since" in first
