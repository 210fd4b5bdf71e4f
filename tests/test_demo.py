"""`textbook demo`: every stage end to end, offline, against the project's OpenAI-compatible server."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.cli import main
from pipeline.generate.stub_server import StubServer
from tests.filter.corpus import SPAM, documents


def test_demo_runs_every_stage_and_leaves_every_artifact(tmp_path: Path, capsys) -> None:
    web = tmp_path / "web.jsonl"
    rows = [{"id": f"w{i}", "text": t} for i, t in enumerate(documents(120, seed=7))]
    rows += [{"id": f"s{i}", "text": f"{SPAM} Offer {i}."} for i in range(10)]
    web.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run_dir = tmp_path / "run"
    with StubServer() as server:
        code = main([
            "demo", "-c", "configs/demo.yaml",
            f"run_dir={run_dir}", "workers=1",
            "generate.backend=openai", f"generate.base_url={server.base_url}", "generate.model=stub-model",
            "generate.num_samples=30", "train.phase1.tokens=8000", "train.phase2.tokens=4000",
            "train.sft.tokens=2000", "train.eval_every=5", "train.compile=false",
            "--web", str(web),
        ])
    assert code == 0, capsys.readouterr()
    for artifact in ("generated/manifest.json", "classifier/edu_fasttext.bin", "classifier/report.json",
                     "filtered/stats.json", "filtered/report.png", "tokenizer/tokenizer.json",
                     "checkpoints/phase1/config.json", "checkpoints/phase2/config.json",
                     "checkpoints/sft/config.json", "card/README.md", "push/README.md"):
        assert (run_dir / artifact).exists(), artifact
    summary = capsys.readouterr().out.split("=== demo summary ===")[1]
    assert "push --dry-run" in summary and "total" in summary
    assert "sft" in summary
