"""`textbook compare`: the data A/B. Every arm is a phase-2 mixture trained from the same phase-1
checkpoint with the same token budget, over ``train.compare.seeds`` seeds; each arm x seed is scored
by `textbook eval` (when ``eval.tasks`` is set) and by its validation bits per byte.

    for arm, seed: train compare/<arm>/seed-<k>/ -> eval.json
      -> per arm: mean and seed spread (min, max) of the score, each task, bpb per domain
      -> per arm against the first (the baseline): the difference of means and whether it exceeds
         the seed-to-seed noise (the larger of the two arms' max - min over seeds)
      -> compare.json, compare.md, compare.png

A difference within the noise is not a result: with two seeds that is the least a reader needs to
know before trusting an A/B (nanochat and DCLM report differences of 0.007-0.04 in CORE).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, public_dict
from pipeline.errors import TrainError
from pipeline.eval.config import EvalConfig
from pipeline.io import check_writable, read_json, write_json, write_png, write_text
from pipeline.lineage import describe_change, fingerprint, manifest_ref
from pipeline.progress import stage_line
from pipeline.rundir import TRAIN_SUMMARY, RunDir, manifest_path
from pipeline.train.config import TrainConfig
from pipeline.train.loop import run_phase
from pipeline.train.plan import PhasePlan
from pipeline.train.prepare import check_inputs, check_mixture

ARM_EVAL = "eval.json"
"""In an arm x seed folder: its ``textbook eval`` result."""


def compare(cfg: Config, restart: bool = False) -> int:
    """Train and score every arm x seed into RUN_DIR/compare/; write and print the table.

    Each arm x seed is a phase with its own lineage (its mixture, phase 2's schedule, the seed, the
    shards it reads, checkpoints/phase1's manifest): one trained on other inputs is an error, or with
    ``restart`` retrained; one already trained on these inputs is reused, and so is its eval.
    """
    c = cfg.train.compare
    arms = c.resolved_arms()
    if len(arms) < 2:
        raise TrainError("config key 'train.compare.arms': need at least two arms to compare")
    run = RunDir(cfg.run_dir)
    phase1 = run.checkpoint("phase1")
    if not (phase1 / TRAIN_SUMMARY).exists():  # written after the final weights
        raise TrainError(f"{phase1}: no phase-1 checkpoint; run `textbook train --phase 1` first")
    plans = {arm: [PhasePlan(f"phase2-{arm}-seed{k}", run.compare_arm(arm, k), phase1,
                             cfg.train.phase2.model_copy(update={"mixture": mixture}), cfg.seed + k,
                             key="train.phase2", mixture_key=f"train.compare.arms.{arm}",
                             config=public_dict(cfg.model_copy(update={"seed": cfg.seed + k})))
                   for k in range(c.seeds)]
             for arm, mixture in arms.items()}
    check_arms(cfg.eval, cfg.train, cfg.run_dir, plans)
    check_writable(TrainError, run.compare)
    out = run.compare
    runs: dict[str, list[dict[str, Any]]] = {}
    total, started = len(arms) * c.seeds, time.perf_counter()
    for arm, seeds in plans.items():
        runs[arm] = []
        for k, plan in enumerate(seeds):
            done = sum(len(r) for r in runs.values())
            print(stage_line(f"arm {arm!r}, seed {k}", done, total, time.perf_counter() - started, "run"),
                  flush=True)
            summary = run_phase(cfg.train, cfg.run_dir, plan, restart)
            if summary.get("stopped_early"):
                raise TrainError(f"compare arm {arm!r} stopped at step {summary['steps_done']}; "
                                 "unset train.stop_at_step")
            runs[arm].append({"seed": cfg.seed + k, "summary": summary,
                              "eval": arm_eval(cfg.eval, cfg.train, cfg.run_dir, plan.out_dir) if cfg.eval.tasks else None})
    table = compare_table(runs, {a: arms[a] for a in runs})
    folders = [run.compare_arm(arm, k) for arm in arms for k in range(c.seeds)]
    table["lineage"] = fingerprint(
        {"train.compare": c.model_dump(mode="json")},
        parents={f.relative_to(out).as_posix(): manifest_ref(manifest_path(f), cfg.run_dir) for f in folders})
    write_json(table, run.compare_table)
    markdown = render_markdown(table)
    write_text(markdown, run.compare_report)
    plot_compare(table, run.compare_figure)
    print(markdown)
    return 0


def check_arms(e: EvalConfig, t: TrainConfig, run_dir: Path, plans: dict[str, list[PhasePlan]]) -> None:
    """Everything that can fail cheaply, before the first arm trains (at scale an arm is GPU hours):
    each arm's mixture and sources, and that every eval task loads (the Hub reached once, not after
    the training)."""
    from pipeline.eval.run import check_hub_reachable, hub_needs
    from pipeline.eval.tasks import load_task

    for seeds in plans.values():
        plan = seeds[0]
        check_inputs(t, run_dir, plan, check_mixture(t, plan.mixture_key, plan.schedule.mixture))
    if e.tasks:
        check_hub_reachable(hub_needs(e, str(plans[next(iter(plans))][0].init_from)))
        for task in e.tasks:
            load_task(task, e.seed)


def arm_eval(e: EvalConfig, t: TrainConfig, run_dir: Path, checkpoint: Path) -> dict[str, Any]:
    """``textbook eval`` of one arm x seed, kept in its folder and reused while its lineage (the
    checkpoint's manifest, the task bundle) is the same."""
    from pipeline.eval.run import checkpoint_lineage, score_checkpoint
    from pipeline.eval.tasks import load_task

    path = checkpoint / ARM_EVAL
    if path.exists():
        stored = read_json(path)
        current = checkpoint_lineage(e, run_dir, [load_task(task, e.seed) for task in e.tasks], str(checkpoint))
        if describe_change(stored.get("lineage", {}), current) is None:
            return stored
    result = score_checkpoint(str(checkpoint), e, run_dir, t.sources, t.val_fraction)
    write_json(result, path)
    return result


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, min, max and every value (NaN-free) of one measure over seeds."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": math.nan, "min": math.nan, "max": math.nan, "values": []}
    return {"mean": float(np.mean(vals)), "min": min(vals), "max": max(vals), "values": vals}


def difference(arm: dict[str, Any], base: dict[str, Any], lower_is_better: bool) -> dict[str, Any]:
    """Difference of means against the baseline, the seed noise, and whether it is beyond it."""
    diff = arm["mean"] - base["mean"]
    ranges = [s["max"] - s["min"] for s in (arm, base) if len(s["values"]) > 1]
    noise = max(ranges) if ranges else None
    better = (diff < 0) if lower_is_better else (diff > 0)
    return {"diff": diff, "noise": noise, "beyond_noise": None if noise is None else abs(diff) > noise,
            "better": bool(better)}


def compare_table(runs: dict[str, list[dict[str, Any]]], mixtures: dict[str, dict[str, float]]) -> dict[str, Any]:
    """compare.json: per arm the spread of each measure over seeds; per arm against the baseline the
    difference and whether it exceeds the seed-to-seed noise."""
    names = list(runs)
    base = names[0]
    domains = sorted({d for rs in runs.values() for r in rs for d in r["summary"].get("final_val", {})})
    tasks = sorted({t for rs in runs.values() for r in rs if r["eval"] for t in r["eval"]["tasks"]})
    arms: dict[str, Any] = {}
    for arm, rs in runs.items():
        evals = [r["eval"] for r in rs if r["eval"]]
        arms[arm] = {
            "mixture": mixtures[arm], "seeds": [r["seed"] for r in rs],
            "tokens": rs[0]["summary"].get("tokens"), "token_shares": rs[0]["summary"].get("token_shares"),
            "score": spread([e["score"] for e in evals]) if evals else None,
            "tasks": {t: spread([e["tasks"][t]["centered"] for e in evals if t in e["tasks"]]) for t in tasks},
            "bpb": {d: spread([r["summary"]["final_val"].get(d, {}).get("bpb", math.nan) for r in rs])
                    for d in domains},
        }
    differences = {}
    for arm in names[1:]:
        a, b = arms[arm], arms[base]
        differences[arm] = {
            "score": difference(a["score"], b["score"], False) if a["score"] and b["score"] else None,
            "tasks": {t: difference(a["tasks"][t], b["tasks"][t], False) for t in tasks},
            "bpb": {d: difference(a["bpb"][d], b["bpb"][d], True) for d in domains},
        }
    bundles = sorted({r["eval"]["bundle_digest"] for rs in runs.values() for r in rs if r["eval"]})
    return {"baseline": base, "seeds": len(runs[base]), "bundle_digest": bundles[0] if len(bundles) == 1 else bundles,
            "arms": arms, "differences": differences}


def _cell(s: dict[str, Any] | None, digits: int = 3) -> str:
    if not s or math.isnan(s["mean"]):
        return "-"
    if len(s["values"]) < 2:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def _verdict(d: dict[str, Any] | None, digits: int = 3) -> str:
    if not d:
        return "-"
    if d["noise"] is None:
        return f"{d['diff']:+.{digits}f} (one seed: no noise estimate)"
    word = ("better" if d["better"] else "worse") if d["beyond_noise"] else "within noise"
    return f"{d['diff']:+.{digits}f} (noise {d['noise']:.{digits}f}: {word})"


def render_markdown(table: dict[str, Any]) -> str:
    """compare.md: the headline score, then each task, then bits per byte; mean [min, max] over seeds."""
    base, arms, diffs = table["baseline"], table["arms"], table["differences"]
    names = list(arms)
    lines = [f"Phase-2 data A/B from one phase-1 checkpoint, {table['seeds']} seed(s) per arm; "
             f"baseline `{base}`. Cells: mean [min, max] over seeds. A difference counts only beyond the "
             "noise (the larger seed range of the two arms).", ""]
    if any(arms[a]["score"] for a in names):
        lines += [f"Downstream score (mean centered accuracy, bundle {table['bundle_digest']}); higher is better:",
                  "", "| arm | mixture | score | vs baseline |", "|---|---|---|---|"]
        for a in names:
            mix = ", ".join(f"{k} {v:g}" for k, v in arms[a]["mixture"].items())
            lines.append(f"| {a} | {mix} | {_cell(arms[a]['score'])} | "
                         f"{_verdict(diffs[a]['score']) if a in diffs else 'baseline'} |")
        tasks = list(arms[base]["tasks"])
        if tasks:
            lines += ["", "Centered accuracy per task:", "",
                      "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
            for t in tasks:
                lines.append(f"| {t} | " + " | ".join(_cell(arms[a]["tasks"].get(t)) for a in names) + " |")
        lines.append("")
    domains = list(arms[base]["bpb"])
    if domains:
        lines += ["Validation bits per byte; lower is better:", "",
                  "| domain | " + " | ".join(names) + " | " + " | ".join(f"{a} - {base}" for a in names[1:]) + " |",
                  "|---|" + "---|" * (2 * len(names) - 1)]
        for d in domains:
            lines.append(f"| {d} | " + " | ".join(_cell(arms[a]["bpb"][d], 4) for a in names) + " | "
                         + " | ".join(_verdict(diffs[a]["bpb"][d], 4) for a in names[1:]) + " |")
    budget = ", ".join(f"{a}: {arms[a]['tokens']:,} tokens" for a in names if arms[a]["tokens"])
    return "\n".join([*lines, "", f"Token budget per arm and seed: {budget}.", ""])


def plot_compare(table: dict[str, Any], path: Path) -> None:
    """compare.png: the score per arm (each seed a dot, min-max bar) and bpb per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = table["arms"]
    names = list(arms)
    has_score = any(arms[a]["score"] and arms[a]["score"]["values"] for a in names)
    domains = list(arms[names[0]]["bpb"])
    fig, axes = plt.subplots(1, 2 if has_score else 1, figsize=(11 if has_score else 6, 4), squeeze=False)
    panels = list(axes[0])
    if has_score:
        ax = panels.pop(0)
        for i, a in enumerate(names):
            s = arms[a]["score"]
            ax.errorbar([i], [s["mean"]], yerr=[[s["mean"] - s["min"]], [s["max"] - s["mean"]]], fmt="o",
                        capsize=6, color="C0")
            ax.scatter([i] * len(s["values"]), s["values"], color="C1", s=14, zorder=3)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_ylabel("mean centered accuracy")
        ax.set_title(f"downstream score ({table['seeds']} seeds; bars: min-max)")
    ax = panels[0]
    width = 0.8 / max(1, len(names))
    for i, a in enumerate(names):
        means = [arms[a]["bpb"][d]["mean"] for d in domains]
        lows = [arms[a]["bpb"][d]["mean"] - arms[a]["bpb"][d]["min"] for d in domains]
        highs = [arms[a]["bpb"][d]["max"] - arms[a]["bpb"][d]["mean"] for d in domains]
        ax.bar(np.arange(len(domains)) + i * width, means, width, yerr=[lows, highs], capsize=3, label=a)
    ax.set_xticks(np.arange(len(domains)) + width * (len(names) - 1) / 2, domains)
    ax.set_ylabel("validation bits per byte (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_png(fig, path)
