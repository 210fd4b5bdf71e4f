"""generate's lineage (what its rows were built from), ``--restart``, and its log when stderr is a file."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.io import list_shards, read_json, read_shards
from pipeline.lineage import content_digest
from pipeline.llm.stub_server import StubServer

ROOT = Path(__file__).resolve().parents[2]


def test_rows_resume_only_on_the_same_lineage_and_restart_keeps_the_discarded_cost(tmp_path, capsys, scheduler):
    """A grown run resumes; a changed setting or template is refused with what changed; ``--restart``
    discards the old rows, says how many paid rows go, and keeps their ledger in the manifest."""
    prompts = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts", prompts)
    out = tmp_path / "run" / "generated"
    with StubServer(api_key="sk-test") as srv:
        def generate(*overrides: str) -> tuple[int, str, str]:
            code = main(["generate", f"run_dir={tmp_path / 'run'}", f"generate.base_url={srv.base_url}",
                         "generate.model=stub-model", "generate.api_key=sk-test", "generate.max_tokens=20",
                         f"generate.prompts_dir={prompts}", "generate.templates={textbook: 1, story: 1}",
                         "generate.price_input_per_million=1000", f"scheduler={scheduler}", *overrides])
            return code, *capsys.readouterr()

        assert generate("generate.num_samples=4")[0] == 0
        assert generate("generate.num_samples=6")[0] == 0  # num_samples does not shape a row: the run grows
        assert len(srv.completed()) == 6
        unchanged = (out / "manifest.json").read_bytes()
        assert generate("generate.num_samples=6")[0] == 0  # nothing new: downstream parents stay valid
        assert (out / "manifest.json").read_bytes() == unchanged and len(srv.completed()) == 6
        manifest = read_json(out / "manifest.json")
        parts = list_shards(out)
        assert manifest["outputs"] == {f"generated/{p.name}": content_digest(p) for p in parts}
        lineage = manifest["lineage"]
        assert lineage["config"]["generate"]["temperature"] == 0.8 and lineage["parents"] == {}
        assert lineage["inputs"]["prompts/textbook.j2"] == content_digest(prompts / "textbook.j2")
        assert "prompts/seeds/taxonomy.yaml" in lineage["inputs"]
        before = {p.name: content_digest(p) for p in parts}

        code, _, err = generate("generate.num_samples=6", "generate.temperature=0.2")
        assert code == 2 and err.strip().splitlines()[-1] == (
            f"error: {out}: generate output was built from other inputs (config generate.temperature was 0.8, "
            "now 0.2); use a new run_dir, or rerun with --restart to discard it")
        (prompts / "textbook.j2").write_text((prompts / "textbook.j2").read_text() + "\nBe concise.\n")
        code, _, err = generate("generate.num_samples=6")
        assert code == 2 and "(input prompts/textbook.j2 changed)" in err
        assert {p.name: content_digest(p) for p in list_shards(out)} == before  # nothing touched
        assert len(srv.completed()) == 6

        code, _, err = generate("generate.num_samples=6", "generate.temperature=0.2", "--restart")
        assert code == 0 and "--restart: discarding 6 paid rows" in err
        assert len(srv.completed()) == 12
    table = read_shards(out)
    assert len(table) == 6 and set(table["temperature"]) == {0.2}
    manifest = read_json(out / "manifest.json")
    assert manifest["ledger"]["requests"] == 6
    assert manifest["lineage"]["config"]["generate"]["temperature"] == 0.2
    [discarded] = manifest["discarded_runs"]
    assert discarded["rows"] == 6 and discarded["requests"] == 6 and discarded["cost_usd"] > 0
    assert "prompts/textbook.j2 changed" in discarded["reason"]


@pytest.mark.slow
def test_log_to_a_file_has_periodic_lines_and_no_bar_frames(tmp_path, capsys, monkeypatch, scheduler):
    """stderr not a terminal (here: captured): one plain line per ``TEXTBOOK_PROGRESS_S``, no carriage returns."""
    monkeypatch.setenv("TEXTBOOK_PROGRESS_S", "0.3")
    began = time.monotonic()
    with StubServer(latency_s=0.1) as srv:
        code = main(["generate", f"run_dir={tmp_path}", f"generate.base_url={srv.base_url}", "generate.model=stub-model",
                     "generate.num_samples=24", "generate.concurrency=2", "generate.max_tokens=20",
                     f"scheduler={scheduler}"])
    elapsed = time.monotonic() - began
    err = capsys.readouterr().err
    assert code == 0 and "\r" not in err
    progress = [line for line in err.splitlines() if line.startswith("generate: ")]
    assert len(progress) >= 2 and progress[-1].startswith("generate: 24/24 row (100%)")
    assert len(progress) <= elapsed / 0.3 + 2


def test_workers_load_the_model_without_bars_over_the_drivers(tiny_llama, capfd):
    """What a worker runs to load the transformers backend prints no "Loading weights" bar (a worker's
    stderr is the driver's terminal, where it would be drawn over the generate bar)."""
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as hf_logging

    from pipeline.config import load_config
    from pipeline.llm.backends import load_quietly

    gen = load_config(None, [f"generate.model={tiny_llama}", "generate.device=cpu"]).generate
    verbosity, hub_bars = hf_logging.get_verbosity(), os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    try:
        backend = load_quietly(gen)
    finally:  # this process is not a worker: give the other tests their bars and messages back
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)
        if hub_bars is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
            enable_progress_bars()
    assert backend.model is not None
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "\r" not in err
