"""What the card says the data is worth: the downstream scores `textbook eval` wrote and the data A/B
`textbook compare` wrote, each with the bundle digest that says which scores may be compared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.io import read_json
from pipeline.rundir import RunDir


def eval_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """``RUN_DIR/eval/<checkpoint>.json`` by checkpoint name."""
    return {p.stem: read_json(p) for p in RunDir(run_dir).eval_results()}


def eval_section(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """One checkpoint's downstream table: per task accuracy, accuracy_norm, chance, centered, items;
    the mean centered score; bits per byte per domain; the bundle digest."""
    if not result:
        return None
    tasks = [{"task": name, **{k: t[k] for k in ("items", "accuracy", "accuracy_norm", "chance", "centered")}}
             for name, t in result["tasks"].items()]
    return {"checkpoint": result["checkpoint"], "tasks": tasks, "score": result["score"],
            "bpb": result.get("bpb", {}), "bundle_digest": result["bundle_digest"]}


def compare_section(run_dir: Path) -> dict[str, Any] | None:
    """The data A/B from ``compare/compare.json``: per arm its mixture, score (mean and seed range) and
    the verdict against the baseline (beyond the seed noise or not)."""
    path = RunDir(run_dir).compare_table
    if not path.is_file():
        return None
    table = read_json(path)
    arms = []
    for name, arm in table["arms"].items():
        diff = (table["differences"].get(name) or {}).get("score")
        arms.append({"arm": name, "mixture": ", ".join(f"{k} {v:g}" for k, v in arm["mixture"].items()),
                     "score": arm.get("score"), "diff": diff})
    return {"baseline": table["baseline"], "seeds": table["seeds"], "bundle_digest": table.get("bundle_digest"),
            "arms": arms}
