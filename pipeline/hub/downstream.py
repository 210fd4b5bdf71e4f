"""What the card says the data is worth: the downstream scores `textbook eval` wrote and the data A/B
`textbook compare` wrote, each with the bundle digest that says which scores may be compared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.hub.provenance import public_path
from pipeline.io import read_json
from pipeline.lineage import checkpoint_digest, relative_name
from pipeline.rundir import MODEL_CONFIG, PHASES, RunDir


def eval_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """``RUN_DIR/eval/*.json`` by file name (without ``.json``)."""
    return {p.stem: read_json(p) for p in RunDir(run_dir).eval_results()}


def checkpoint_results(run_dir: Path, notes: list[str]) -> dict[str, dict[str, Any]]:
    """{phase: result} of this run's checkpoints: a result counts for a phase only when it scored the
    checkpoint now in ``checkpoints/<phase>`` (its ``checkpoint_digest``), whatever the file is named;
    every other result is left out with a note in ``notes`` saying why."""
    run = RunDir(run_dir)
    phases = {checkpoint_digest(run.checkpoint(p)): p for p in PHASES if (run.checkpoint(p) / MODEL_CONFIG).is_file()}
    found: dict[str, dict[str, Any]] = {}
    for name, result in eval_results(run_dir).items():
        where, digest = f"eval/{name}.json", result.get("checkpoint_digest")
        scored = str(result.get("checkpoint", ""))
        if digest in phases:
            found[phases[digest]] = result
        elif digest is None:
            notes.append(f"{where}: does not record which checkpoint it scored (an older eval); rerun textbook eval")
        elif scored in {relative_name(run.checkpoint(p), run_dir) for p in PHASES}:
            notes.append(f"{where}: scored an earlier {Path(scored).name} checkpoint than the run holds now; rerun "
                         f"textbook eval --checkpoint {Path(scored).name}")
        else:
            notes.append(f"{where}: scored a checkpoint outside this run ({public_path(scored, run_dir)}); not shown")
    return found


def eval_section(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """One checkpoint's downstream table: per task accuracy, accuracy_norm, chance, centered, items;
    the mean centered score; bits per byte per domain; the bundle digest."""
    if not result:
        return None
    tasks = [{"task": name, **{k: t[k] for k in ("items", "accuracy", "accuracy_norm", "chance", "centered")}}
             for name, t in result["tasks"].items()]
    return {"checkpoint": result["checkpoint"], "digest": result.get("checkpoint_digest"), "tasks": tasks, "score": result["score"],
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
