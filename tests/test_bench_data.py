"""Benchmarks a clone can rerun: third-party data only through bench/shared_data.py, which says what
was used and builds a stand-in (or names the file and where to get it) when the data is not there."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pipeline.eval.config import TaskConfig
from pipeline.eval.tasks import load_task

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module(name: str) -> ModuleType:
    """A bench script as a module, without putting bench/ on the path of every other test."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


shared_data = bench_module("shared_data")


def test_no_benchmark_reads_the_machines_shared_folder_by_itself():
    for script in sorted(BENCH.glob("*.py")):
        if script.name == "shared_data.py":
            continue
        text = script.read_text(encoding="utf-8")
        assert not re.search(r"""["']shared["']\s*/\s*["']data["']|shared/data""", text), script.name


def test_a_missing_file_is_said_with_its_source_and_a_stand_in(tmp_path, capsys):
    assert shared_data.find("benchmarks/mmlu/test", "MMLU", tmp_path, stand_in="cloze items") is None
    out = capsys.readouterr().out
    assert out.startswith(f"data: MMLU: {tmp_path}/benchmarks/mmlu/test not found (it is MMLU test CSVs")
    assert "hendrycks/test" in out and out.rstrip().endswith("using cloze items instead")
    with pytest.raises(SystemExit, match=r"bench: needs pages: .*trafilatura"):
        shared_data.find("web/trafilatura_pages.jsonl", "pages", tmp_path)
    (tmp_path / "web").mkdir()
    assert shared_data.find("web", "web pages", tmp_path) == tmp_path / "web"
    assert capsys.readouterr().out == f"data: web pages: {tmp_path / 'web'}\n"


def test_the_eval_stand_in_items_are_a_task_the_eval_stage_reads(tmp_path):
    n = bench_module("eval").write_standin_items(tmp_path / "items.jsonl", 50, seed=0)
    task = load_task(TaskConfig(name="docs", path=str(tmp_path / "items.jsonl"), format="mc_jsonl"), 0)
    assert n == len(task.items) == 50 and all(len(i.choices) == 4 for i in task.items)
    assert len({i.question for i in task.items}) == 50
