"""`textbook generate`: sample seeds, render prompts, complete them on the request engine, report
cost and diversity.

    plan (templates, seeds, web extracts, rephrase routes) -> pipeline.llm run -> diversity report
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pipeline.config import Config, public_dict
from pipeline.errors import GenerateError
from pipeline.generate.config import GenerateConfig
from pipeline.io import check_writable, read_shards
from pipeline.llm.run import run_requests
from pipeline.llm.spec import RunSpec, RunSummary
from pipeline.rundir import FLAGS, TEXT, RunDir


def generate(cfg: Config, dry_run: bool = False, restart: bool = False, **_: Any) -> int:
    """`textbook generate`: sample seeds, render prompts, complete them, report cost and diversity.

    Writes ``RUN_DIR/generated/part-NNNNN.parquet`` and ``manifest.json``; exit code 0 when the run is
    complete or stopped cleanly by ``generate.max_cost_usd``, 1 when the diversity gate fails. Resumes
    only rows built from the same templates, seeds, web extracts and settings (``plan_lineage``);
    ``restart`` discards rows built from others.
    """
    from pipeline.generate.conversation import conversation_turns
    from pipeline.generate.diversity import OpeningGate
    from pipeline.generate.plan import plan_lineage, plan_requests

    gen = cfg.generate
    out_dir = RunDir(cfg.run_dir).generated
    if not dry_run:  # before a request is paid for, not at the first write
        check_writable(GenerateError, out_dir)
    requests, templates = plan_requests(gen, cfg.seed, cfg.run_dir)
    template_info = {name: {"sha": t.sha, "requires": list(t.requires), "about": t.about}
                     for name, t in templates.items()}
    # the opening gate is generate's own (other stages' answers are labels, not prose)
    gate = OpeningGate(gen.diversity_max_opening_share) if gen.diversity_gate == "fail" else None
    postprocess = None
    if gen.rephrase.input:  # rephrased rows: faithfulness to the source chunk, flagged below the minimum
        from pipeline.generate.rephrase import Faithfulness

        postprocess = Faithfulness(gen.rephrase.min_faithfulness)
    spec = RunSpec("generate", out_dir, cfg.run_dir, gen, seed=cfg.seed,
                   scheduler=cfg.scheduler, workers=cfg.workers, postprocess=postprocess,
                   dialogue=conversation_turns(gen), gate=gate, lineage=plan_lineage(gen, cfg.seed, cfg.run_dir, templates),
                   config=public_dict(cfg), manifest_fields={"templates": template_info},
                   describe=lambda summary, previous: diversity(gen, summary, previous))
    summary = run_requests(spec, requests, restart=restart, dry_run=dry_run)
    if dry_run:
        print(f"first prompt ({requests['template'].iloc[0]}):\n{requests['prompt'].iloc[0]}"
              if len(requests) else "no rows planned (generate.num_samples=0"
              + (f" and no documents to rephrase in {', '.join(gen.rephrase.input)})" if gen.rephrase.input else ")"))
        return 0
    if summary.rows == 0:
        return 0
    report = summary.described["diversity"]
    print(f"diversity: distinct-1/2/3 {report['distinct_1']:.3f}/{report['distinct_2']:.3f}/"
          f"{report['distinct_3']:.3f}; top opening {report['top_opening']!r} in "
          f"{report['top_opening_share']:.0%} of rows; near-duplicates {report['near_duplicate_rate']:.1%}")
    for warning in flag_warnings(summary.out_dir, gen):
        print(f"warning: {warning}", file=sys.stderr)
    verdict = report["gate"]
    if verdict:
        print(f"{'error' if gen.diversity_gate == 'fail' else 'warning'}: {verdict}", file=sys.stderr)
        if gen.diversity_gate == "fail":
            return 1
    return 0


def diversity(gen: GenerateConfig, summary: RunSummary, previous: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``diversity``: the report over every row's text and the gate's verdict."""
    from pipeline.generate.diversity import diversity_report

    if summary.rows == 0:
        return {}
    if summary.new_rows == 0 and "diversity" in previous:  # same rows, same report
        report = {k: v for k, v in previous["diversity"].items() if k != "gate"}
    else:
        report = diversity_report(read_shards(summary.out_dir, [TEXT])[TEXT].tolist())
    return {"diversity": {**report, "gate": _diversity_verdict(report, gen.diversity_max_opening_share,
                                                               gen.diversity_gate)}}


def flag_warnings(out_dir: Path, gen: GenerateConfig) -> list[str]:
    """What the rows' flags say about the settings: too many cut off or looping, or a greedy server."""
    from pipeline.llm.flags import flagged_warning, greedy_warning

    rows = read_shards(out_dir, ["prompt", TEXT, FLAGS])
    said = [flagged_warning(rows[FLAGS].tolist(), gen.max_tokens, gen.max_flagged_share),
            greedy_warning(rows["prompt"].tolist(), rows[TEXT].tolist(), gen.temperature)]
    return [s for s in said if s]


def _diversity_verdict(report: dict[str, Any], max_share: float, mode: str) -> str | None:
    if mode == "off" or report["texts"] < 10 or report["top_opening_share"] <= max_share:
        return None
    return (f"opening {report['top_opening']!r} starts {report['top_opening_share']:.0%} of rows, over "
            f"generate.diversity_max_opening_share={max_share:.0%}; vary the prompts or raise the limit")
