"""`textbook demo`: every stage end to end, offline, against the project's OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import huggingface_hub.constants
import pytest

from pipeline.cli import main
from pipeline.io import read_shards
from pipeline.llm.stub_server import StubServer, textbook_responder
from tests.filters.corpus import SPAM, documents


def run_demo(tmp_path: Path, server: StubServer) -> tuple[int, Path]:
    web = tmp_path / "web.jsonl"
    rows = [{"id": f"w{i}", "text": t} for i, t in enumerate(documents(120, seed=7))]
    rows += [{"id": f"s{i}", "text": f"{SPAM} Offer {i}."} for i in range(10)]
    web.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run_dir = tmp_path / "run"
    code = main([
        "demo", "-c", "configs/demo.yaml",
        f"run_dir={run_dir}", "workers=1",
        "generate.backend=openai", f"generate.base_url={server.base_url}", "generate.model=stub-model",
        "generate.num_samples=30", "train.phase1.tokens=8000", "train.phase2.tokens=4000",
        "train.sft.tokens=2000", "train.eval_every=5", "train.compile=false",
        "--web", str(web),
    ])
    return code, run_dir


@pytest.mark.slow
def test_demo_runs_every_stage_and_leaves_every_artifact(tmp_path: Path, capsys) -> None:
    with StubServer() as server:
        code, run_dir = run_demo(tmp_path, server)
    assert code == 0, capsys.readouterr()
    for artifact in ("generated/manifest.json", "classifier/edu_fasttext.bin", "classifier/report.json",
                     "filtered/stats.json", "filtered/report.png", "tokenizer/tokenizer.json",
                     "checkpoints/phase1/config.json", "checkpoints/phase2/config.json",
                     "checkpoints/sft/config.json", "card/README.md", "push/README.md"):
        assert (run_dir / artifact).exists(), artifact
    out = capsys.readouterr().out
    assert "=== generate (stage 1 of 8) ===" in out  # stage k of N, then the time so far
    assert re.search(r"=== push --dry-run \(stage 8 of 8, \d+ (s|min) so far\) ===", out)
    summary = out.split("=== demo summary ===")[1]
    assert "push --dry-run" in summary and "total" in summary
    assert "sft" in summary

    # the same command again: every stage finds its inputs unchanged, and no manifest a later stage
    # recorded as its parent is rewritten (a rewritten one would stop that stage)
    manifests = {p: p.read_bytes() for p in run_dir.glob("*/**/manifest.json")
                 if p.relative_to(run_dir).parts[0] not in ("card", "push")}
    with StubServer() as server:
        code, _ = run_demo(tmp_path, server)
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "classifier: " in out.out and "is up to date" in out.out and "already trained on these inputs" in out.out
    assert {p: p.read_bytes() for p in manifests} == manifests


@pytest.mark.slow
def test_demo_trains_sft_even_when_the_generator_ignores_every_turn_format(tmp_path: Path, capsys) -> None:
    """Conversations are built one request per turn, so a model that writes no Student:/Teacher: labels
    (as small models do) still yields alternating user/assistant messages, and SFT always trains."""
    def prose_only(messages: list[dict], params: dict) -> str:
        return textbook_responder(messages, params).replace("Student:", "").replace("Teacher:", "")

    with StubServer(responder=prose_only) as server:
        code, run_dir = run_demo(tmp_path, server)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "sft skipped" not in out
    assert (run_dir / "checkpoints" / "sft" / "config.json").exists()
    chats = read_shards(run_dir / "generated")
    chats = chats[chats["template"] == "conversation"]
    assert len(chats)
    for messages in chats["messages"]:
        roles = [m["role"] for m in messages]
        assert len(roles) >= 2 and set(roles[0::2]) == {"user"} and set(roles[1::2]) == {"assistant"}


@pytest.fixture
def empty_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No model in the Hub cache, so the demo's generator model can only come from the Hub."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_one_line_offline_hint(code: int, err: str, run_dir: Path) -> None:
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: the Hugging Face Hub is unreachable"), err
    assert "make demo MODEL=/path/to/model WEB=/path/to/web.parquet" in err
    assert not (run_dir / "generated").exists()  # stopped before any stage


def test_offline_demo_with_a_hub_model_says_how_to_run_offline_before_any_stage(
        tmp_path, monkeypatch, capsys, empty_hub_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code = main(["demo", "-c", "configs/demo.yaml", f"run_dir={tmp_path / 'run'}",
                 "--model", "HuggingFaceTB/SmolLM2-135M-Instruct"])
    err = capsys.readouterr().err
    _assert_one_line_offline_hint(code, err, tmp_path / "run")
    assert "(HF_HUB_OFFLINE=1 is set)" in err
    assert "generate.model=HuggingFaceTB/SmolLM2-135M-Instruct" in err


def test_offline_demo_with_web_text_named_on_the_hub_stops_instead_of_using_other_text(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code = main(["demo", "-c", "configs/demo.yaml", f"run_dir={tmp_path / 'run'}",
                 "--web", "hf://datasets/HuggingFaceFW/fineweb-edu/sample/10BT/000_00000.parquet"])
    err = capsys.readouterr().err
    _assert_one_line_offline_hint(code, err, tmp_path / "run")
    assert "filter.input=hf://datasets/HuggingFaceFW/fineweb-edu" in err


@pytest.mark.slow
def test_offline_demo_without_arguments_filters_the_installed_documentation_and_the_card_names_it(
        tmp_path, monkeypatch, capsys):
    """No Hub, no WEB: the config's FineWeb-Edu sample gives way to the documentation on this machine."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    run_dir = tmp_path / "run"
    with StubServer() as server:
        code = main(["demo", "-c", "configs/demo.yaml", f"run_dir={run_dir}", "workers=1",
                     "generate.backend=openai", f"generate.base_url={server.base_url}", "generate.model=stub-model",
                     "generate.num_samples=30", "train.phase1.tokens=8000",
                     "train.phase2.tokens=4000", "train.sft.tokens=2000", "train.eval_every=5", "train.compile=false"])
    out = capsys.readouterr().out
    assert code == 0, out
    line = next(x for x in out.splitlines() if x.startswith("demo: web text:"))
    assert "installed documentation" in line and "HF_HUB_OFFLINE=1" in line
    stats = json.loads((run_dir / "filtered" / "stats.json").read_text())
    assert stats["documents_in"] > 500 and 0 < stats["documents_out"] < stats["documents_in"]
    reasons = stats["removed_by_reason"]
    assert {"exact_dup", "near_dup"} & set(reasons)  # the same license text in many packages
    assert any(r.startswith(("gopher", "c4", "fineweb")) for r in reasons)
    card = (run_dir / "card" / "README.md").read_text()
    assert "installed documentation (Python's reference" in card
    summary = out.split("=== demo summary ===")[1]
    assert "kept " in summary and "30 rows" in summary


def test_demo_with_local_web_text_but_a_hub_model_stops_when_the_hub_does_not_answer(
        tmp_path, monkeypatch, capsys, empty_hub_cache):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    web = tmp_path / "web.jsonl"
    web.write_text("".join(json.dumps({"text": t}) + "\n" for t in documents(5, seed=1)), encoding="utf-8")
    code = main(["demo", "-c", "configs/demo.yaml", f"run_dir={tmp_path / 'run'}", "--web", str(web),
                 "--model", "HuggingFaceTB/SmolLM2-135M-Instruct"])
    err = capsys.readouterr().err
    _assert_one_line_offline_hint(code, err, tmp_path / "run")
    assert endpoint in err and "generate.model=HuggingFaceTB/SmolLM2-135M-Instruct" in err
    assert "filter.input" not in err  # the web text is local
