"""`textbook status`: what each stage of a run directory holds, whether it is up to date, and what it cost.

Read from the manifests and reports the stages wrote (nothing is hashed but the small manifests, so
it answers at once on a large run), in pipeline order. A stage is *stale* when a manifest it was
built from changed since (rerun it), *incomplete* when it stopped before its end (rerun to resume),
and *running* while a live process holds the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.io import read_json
from pipeline.lineage import changed_parent, checkpoint_digest, relative_name
from pipeline.progress import duration
from pipeline.rundir import (
    MODEL_CONFIG,
    PHASES,
    TRAIN_SUMMARY,
    RunDir,
    list_shards,
    list_states,
    manifest_path,
    state_dir,
)
from pipeline.runlock import holder


@dataclass
class StageStatus:
    stage: str
    holds: str
    state: str
    """``up to date``, ``stale: ...``, ``incomplete: ...`` or ``not run``."""
    cost: str = ""


def status(cfg: Config) -> int:
    """Print the run directory's stages as a table (and who holds it, when a stage is running)."""
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise PipelineError(f"run_dir {run_dir}: no such run directory (set run_dir=... or run a stage first)")
    live = holder(run_dir)
    print(f"run_dir {run_dir}" + (f": running pid {live.get('pid')} on {live.get('host')} ({live.get('command')}, "
                                 f"since {live.get('since')})" if live is not None else ""))
    rows = run_status(run_dir)
    widths = [max(len(r.stage) for r in rows), max(len(r.holds) for r in rows), max(len(r.state) for r in rows)]
    print(f"{'stage':<{widths[0]}}  {'holds':<{widths[1]}}  {'state':<{widths[2]}}  cost")
    for r in rows:
        print(f"{r.stage:<{widths[0]}}  {r.holds:<{widths[1]}}  {r.state:<{widths[2]}}  {r.cost}".rstrip())
    return 0


def run_status(run_dir: Path) -> list[StageStatus]:
    """One row per stage, in pipeline order."""
    run = RunDir(run_dir)
    rows = [_requests_stage("generate", run.generated, run_dir, "rows"),
            _requests_stage("annotate", run.annotations, run_dir, "answers"),
            _classifier(run, run_dir), _filter(run, run_dir), _tokenizer(run, run_dir)]
    rows += [_phase(run, phase, run_dir) for phase in PHASES]
    rows += [_eval(run, run_dir), _compare(run, run_dir), _card(run, run_dir), _push(run)]
    return rows


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _freshness(manifest: dict[str, Any], run_dir: Path) -> str:
    changed = changed_parent(manifest.get("lineage"), run_dir)
    return "up to date" if changed is None else f"stale: {changed[0]} {changed[1]}"


def _seconds(value: Any) -> str:
    return duration(float(value)) if isinstance(value, (int, float)) else ""


def _requests_stage(stage: str, folder: Path, run_dir: Path, what: str) -> StageStatus:
    manifest = _manifest(manifest_path(folder))
    if manifest is None:
        return StageStatus(stage, f"{len(list_shards(folder))} shards" if list_shards(folder) else "-",
                           "incomplete: no manifest yet (rerun to resume)" if list_shards(folder) else "not run")
    totals, ledger = manifest.get("totals") or {}, manifest.get("ledger") or {}
    holds = f"{totals.get('rows', 0):,} of {totals.get('requests', 0):,} {what}"
    state = _freshness(manifest, run_dir)
    if state == "up to date" and not totals.get("complete", True):
        state = f"incomplete: {manifest.get('stop_reason') or 'stopped early'} (rerun to resume)"
    cost = (f"${ledger.get('cost_usd', 0):.4f}, {ledger.get('requests', 0):,} requests, "
            f"{ledger.get('prompt_tokens', 0) + ledger.get('completion_tokens', 0):,} tokens")
    spent = sum(r.get("cost_usd", 0) for r in manifest.get("discarded_runs") or [])
    return StageStatus(stage, holds, state, cost + (f" (+${spent:.4f} discarded)" if spent else ""))


def _classifier(run: RunDir, run_dir: Path) -> StageStatus:
    report = _manifest(run.classifier_report) or _manifest(run.classifier_rejected / run.classifier_report.name)
    if report is None:
        return StageStatus("train-classifier", "-", "not run")
    auc = (report.get("validation") or {}).get("roc_auc")
    holds = f"{run.classifier_model.name} ({report.get('verdict')}" + (f", ROC-AUC {auc:.3f})" if auc else ")")
    manifest = _manifest(manifest_path(run.classifier)) or report
    return StageStatus("train-classifier", holds, _freshness(manifest, run_dir), _seconds(report.get("total_time_s")))


def _filter(run: RunDir, run_dir: Path) -> StageStatus:
    manifest = _manifest(manifest_path(run.filtered))
    if manifest is None:
        return StageStatus("filter", "-", "not run")
    holds = f"{manifest.get('documents_out', 0):,} of {manifest.get('documents_in', 0):,} documents kept"
    return StageStatus("filter", holds, _freshness(manifest, run_dir),
                       _seconds(sum((manifest.get("timings_s") or {}).values())))


def _tokenizer(run: RunDir, run_dir: Path) -> StageStatus:
    manifest = _manifest(manifest_path(run.tokenizer))
    if manifest is None:
        return StageStatus("tokenizer", "-", "not run")
    return StageStatus("tokenizer", f"vocab {manifest.get('vocab', 0):,}", _freshness(manifest, run_dir))


def _phase(run: RunDir, phase: str, run_dir: Path) -> StageStatus:
    folder = run.checkpoint(phase)
    summary = _manifest(folder / TRAIN_SUMMARY)
    states = list_states(state_dir(folder))
    if summary is None:
        if states:
            return StageStatus(phase, f"saved state at step {int(states[-1].name.split('-')[1])}",
                               "incomplete: rerun to resume")
        return StageStatus(phase, "-", "not run")
    holds = f"{summary.get('steps_done', 0):,} steps, {summary.get('tokens', 0):,} tokens"
    manifest = _manifest(manifest_path(folder)) or {}
    state = _freshness(manifest, run_dir)
    if state == "up to date" and summary.get("stopped_early"):
        state = "incomplete: stopped at train.stop_at_step (rerun to resume)"
    return StageStatus(phase, holds, state, _seconds(summary.get("train_time_s")))


def _eval(run: RunDir, run_dir: Path) -> StageStatus:
    results = {p.name: _manifest(p) for p in run.eval_results()}
    if not results:
        return StageStatus("eval", "-", "not run")
    current = {checkpoint_digest(run.checkpoint(p)): p for p in PHASES if (run.checkpoint(p) / MODEL_CONFIG).is_file()}
    shown, stale = [], 0
    for result in results.values():
        if not result:
            continue
        phase = current.get(result.get("checkpoint_digest"))
        if phase is not None:
            shown.append(f"{phase} {result.get('score', float('nan')):.3f}")
        elif str(result.get("checkpoint")) in {relative_name(run.checkpoint(p), run_dir) for p in PHASES}:
            stale += 1
    holds = f"{len(results)} results" + (f" ({', '.join(shown)})" if shown else "")
    state = f"stale: {stale} scored an earlier checkpoint" if stale else "up to date"
    seconds = sum(r.get("seconds") or 0 for r in results.values() if r)
    return StageStatus("eval", holds, state, _seconds(seconds))


def _compare(run: RunDir, run_dir: Path) -> StageStatus:
    table = _manifest(run.compare / "compare.json")
    if table is None:
        return StageStatus("compare", "-", "not run")
    holds = f"{len(table.get('arms') or {})} arms x {table.get('seeds')} seeds"
    return StageStatus("compare", holds, _freshness(table, run_dir))


def _card(run: RunDir, run_dir: Path) -> StageStatus:
    manifest = _manifest(manifest_path(run.card))
    if manifest is None:
        return StageStatus("card", "-", "not run")
    from pipeline.hub.provenance import check_card_fresh
    from pipeline.lineage import LineageError

    try:
        check_card_fresh(run_dir)
        state = "up to date"
    except LineageError:
        state = "stale: a manifest it was built from changed since (rerun textbook card)"
    return StageStatus("card", "card/README.md" + (", model/README.md" if (run.card / "model").is_dir() else ""),
                       state)


def _push(run: RunDir) -> StageStatus:
    pushed = _manifest(run.pushed) or {}
    dry = [f.name for f in (run.push, run.push_model) if f.is_dir()]
    if not pushed and not dry:
        return StageStatus("push", "-", "not run")
    holds = ", ".join([*(f"{k} -> {v}" for k, v in pushed.items()), *(f"{d}/ (dry run)" for d in dry)])
    return StageStatus("push", holds, "pushed" if pushed else "dry run only")
