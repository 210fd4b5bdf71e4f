"""`textbook compare`: the data A/B. Phase-2 arms from the same phase-1 checkpoint, same token budget;
a table of per-domain bits per byte and each arm's difference from the first (the baseline)."""

from __future__ import annotations

import math
from typing import Any

from pipeline.config import Config
from pipeline.errors import TrainError
from pipeline.io import write_json, write_text
from pipeline.lineage import fingerprint, manifest_ref
from pipeline.train.loop import PhasePlan, run_phase


def compare(cfg: Config, restart: bool = False) -> int:
    """Train every arm of ``train.compare.arms`` into RUN_DIR/compare/<arm>/ and print the table.

    Each arm is a phase with its own lineage (its mixture, phase 2's schedule, the shards it reads,
    checkpoints/phase1's manifest): an arm trained on other inputs is an error, or with ``restart``
    retrained; an arm already trained on these inputs is reused.
    """
    arms = cfg.train.compare.arms
    if len(arms) < 2:
        raise TrainError("config key 'train.compare.arms': need at least two arms to compare")
    phase1 = cfg.run_dir / "checkpoints" / "phase1"
    if not (phase1 / "train_summary.json").exists():  # written after the final weights
        raise TrainError(f"{phase1}: no phase-1 checkpoint; run `textbook train --phase 1` first")
    results: dict[str, dict[str, Any]] = {}
    for arm, mixture in arms.items():
        schedule = cfg.train.phase2.model_copy(update={"mixture": mixture})
        plan = PhasePlan(f"phase2-{arm}", cfg.run_dir / "compare" / arm, phase1, schedule,
                         key="train.phase2", mixture_key=f"train.compare.arms.{arm}")
        summary = run_phase(cfg, plan, restart)
        if summary.get("stopped_early"):
            raise TrainError(f"compare arm {arm!r} stopped at step {summary['steps_done']}; unset train.stop_at_step")
        results[arm] = summary
    table = compare_table(results)
    out = cfg.run_dir / "compare"
    table["lineage"] = fingerprint({"train.compare.arms": arms},
                                   parents={arm: manifest_ref(out / arm / "manifest.json", cfg.run_dir) for arm in arms})
    write_json(table, out / "compare.json")
    markdown = render_markdown(table)
    write_text(markdown, out / "compare.md")
    print(markdown)
    return 0


def compare_table(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per domain: each arm's val bits per byte and its difference from the first arm (negative = better)."""
    arms = list(results)
    base = arms[0]
    domains = sorted({dom for r in results.values() for dom in r.get("final_val", {})})
    rows = []
    for dom in domains:
        bpb = {a: results[a]["final_val"].get(dom, {}).get("bpb", math.nan) for a in arms}
        rows.append({"domain": dom, "bpb": bpb, "delta_vs_" + base: {a: bpb[a] - bpb[base] for a in arms[1:]}})
    return {"baseline": base, "arms": {a: {"mixture": results[a]["mixture"], "tokens": results[a]["tokens"],
                                           "tokens_per_source": results[a]["tokens_per_source"]} for a in arms},
            "rows": rows}


def render_markdown(table: dict[str, Any]) -> str:
    base, arms = table["baseline"], list(table["arms"])
    head = ["domain", *[f"{a} bpb" for a in arms], *[f"{a} - {base}" for a in arms[1:]]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["rows"]:
        delta = row["delta_vs_" + base]
        cells = [row["domain"], *[f"{row['bpb'][a]:.4f}" for a in arms], *[f"{delta[a]:+.4f}" for a in arms[1:]]]
        lines.append("| " + " | ".join(cells) + " |")
    budget = ", ".join(f"{a}: {table['arms'][a]['tokens']:,} tokens" for a in arms)
    return "\n".join([f"Phase-2 data A/B from one phase-1 checkpoint ({budget}); lower bpb is better.", "",
                      *lines, ""])
