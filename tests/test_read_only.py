"""A run directory the user cannot write into: each stage says so in one line before its work (no
PermissionError traceback, no request paid for, no scoring thrown away).

Permissions do not bind root, so when the tests run as root the stage runs as a real process
without the capability that overrides them (CAP_DAC_OVERRIDE, dropped from its bounding set before
it starts), as an ordinary user would; otherwise as the user.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import build_tiny_llama
from tests.filters.corpus import documents

ROOT = Path(__file__).resolve().parents[1]
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1


def _as_a_user() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE)")


def run_stage(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-none"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=_as_a_user if os.geteuid() == 0 else None)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("inputs")
    (base / "web.jsonl").write_text("".join(json.dumps({"id": f"w{i}", "text": t}) + "\n"
                                            for i, t in enumerate(documents(12, seed=5))))
    (base / "tasks.jsonl").write_text("".join(json.dumps({"query": f"q{i}", "choices": ["a", "b"], "gold": i % 2})
                                              + "\n" for i in range(6)))
    return {"web": base / "web.jsonl", "tasks": base / "tasks.jsonl", "model": build_tiny_llama(base / "model")}


@pytest.mark.parametrize(("stage", "folder"), [
    (["generate", "generate.model=stub-model", "generate.num_samples=4"], "generated"),
    (["filter", "filter.input=[{web}]", "filter.quality.enabled=false", "filter.include_generated=false"],
     "filtered"),
    (["eval", "--checkpoint", "{model}", "eval.tasks=[{{name: t, path: {tasks}, format: mc_jsonl}}]"], "eval"),
    (["generate", "generate.model=stub-model", "generate.num_samples=4"], "."),
])
@pytest.mark.slow
def test_a_read_only_output_folder_is_one_line_before_any_work(tmp_path, inputs, stage, folder):
    run = tmp_path / "run"
    (run / folder).mkdir(parents=True, exist_ok=True)
    os.chmod(run / folder, 0o555)
    try:
        done = run_stage([*(a.format(**inputs) for a in stage), f"run_dir={run}"])
    finally:
        os.chmod(run / folder, 0o755)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    where = run if folder == "." else run / folder
    assert lines[0].startswith("error: ") and str(where) in lines[0] and "permission denied" in lines[0], lines[0]
    written = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.name != ".lock")
    assert written == ([] if folder == "." else [folder])  # nothing else
