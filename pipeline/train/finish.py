"""The end of a phase (rank 0): a final eval, the ``save_pretrained`` checkpoint, loss.png, the
manifest, and ``train_summary.json`` (written last: it marks the phase complete); the summary a
person reads at the end of a run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from pipeline.io import build_manifest, current_umask, write_json
from pipeline.lineage import file_digests, relative_name
from pipeline.rundir import LOSS_FIGURE, MANIFEST, METRICS, TRAIN_SUMMARY, list_states, manifest_path
from pipeline.train.distributed import barrier
from pipeline.train.evals import plot_losses, read_metrics
from pipeline.train.prepare import Run
from pipeline.train.tokenizer import IM_END


def finish(run: Run) -> dict[str, Any]:
    """The run's summary; at the end of the schedule (rank 0) also a final eval, the
    ``save_pretrained`` checkpoint, loss.png, the manifest and train_summary.json (written last:
    it marks the phase complete)."""
    plan, d = run.plan, run.dist
    done = max(run.start, run.stop)
    summary: dict[str, Any] = {"phase": plan.name, "steps": run.steps, "steps_done": done,
                               "stopped_early": done < run.steps}
    if d.main and done == run.steps:
        final_val = run.validate(run.steps) if run.data.eval_sets else {}
        save_final(run)
        metrics = read_metrics(run.log.path)
        plot_losses(metrics, plan.out_dir / LOSS_FIGURE, f"{plan.name} ({run.run_dir.name})")
        summary.update(phase_summary(run, metrics, final_val))
        write_json(phase_manifest(run), manifest_path(plan.out_dir))
        write_json(summary, plan.out_dir / TRAIN_SUMMARY)  # last: it marks the phase complete
    run.log.close()
    barrier(d)
    return summary


def save_final(run: Run) -> None:
    """The final weights and tokenizer as ``from_pretrained`` reads them (SFT: stopping at <|im_end|> too)."""
    out, model, tok = run.plan.out_dir, run.model, run.tok
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if run.plan.sft:
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(IM_END)]
        model.generation_config.save_pretrained(out)
    follow_umask(out)


def follow_umask(folder: Path) -> None:
    """Give the files directly in ``folder`` the mode an ordinary ``open`` would: safetensors writes
    ``model.safetensors`` through a 0600 temporary file, whatever the umask."""
    mode = 0o666 & ~current_umask()
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, mode)


def phase_manifest(run: Run) -> dict[str, Any]:
    """The phase's manifest: config, init_from, sources, tokenizer, lineage and the digests of its files."""
    plan, run_dir = run.plan, run.run_dir
    outputs = file_digests((f for f in plan.out_dir.iterdir() if f.is_file() and f.name not in
                            (MANIFEST, METRICS, TRAIN_SUMMARY)), run_dir)
    return build_manifest("train", plan.config, phase=plan.name,
                          init_from=relative_name(plan.init_from, run_dir) if plan.init_from else None,
                          sources=run.data.sources, tokenizer=run.tok_id, lineage=run.lineage, outputs=outputs)


def phase_summary(run: Run, metrics: list[dict[str, Any]], final_val: dict[str, dict[str, float]]
                  ) -> dict[str, Any]:
    """What the model card reads (train_summary.json): budget, per-source tokens, final per-domain
    val loss/bpb, speed. (``pipeline.hub.checkpoints.phase_summary`` is the card's reading of it.)"""
    t, plan, d, mixture = run.t, run.plan, run.dist, run.mixture
    rows = run.data.sampler.counts(run.steps * run.rows_per_step)
    train_rows = [r for r in metrics if r["kind"] == "train"]
    # steady-state speed: skip the first steps (allocation, compilation)
    tps = pd.Series([r["tokens_per_s"] for r in train_rows[len(train_rows) // 5:]], dtype=float)
    tokens_per_s = float(tps.median()) if len(tps) else None
    fpt, peak = run.flops_per_token, run.peak
    return {
        "init_from": str(plan.init_from) if plan.init_from else None,
        "tokens": run.steps * run.tokens_per_step,
        "tokens_per_step": run.tokens_per_step,
        "seq_len": t.seq_len,
        "mixture": {n: w / sum(mixture.values()) for n, w in mixture.items()},
        "tokens_per_source": {n: c * t.seq_len for n, c in rows.items()},
        "token_shares": {n: c / max(1, sum(rows.values())) for n, c in rows.items()},
        "sequences_per_source": rows,
        "source_stats": {n: {k: v for k, v in info.items() if k not in ("key", "arrays")}
                         for n, info in run.data.sources.items()},
        "final_train_loss": train_rows[-1]["loss"] if train_rows else None,
        "final_val": final_val,
        "tokens_per_s": tokens_per_s,
        "mfu": fpt * tokens_per_s / (peak * d.world) if peak and tokens_per_s else None,
        "flops_per_token": fpt,
        "parameters": sum(q.numel() for q in run.model.parameters()),
        "device": str(d.device) if d.device.type == "cpu" else torch.cuda.get_device_name(d.device),
        "world_size": d.world,
        "train_time_s": sum(run.tokens_per_step / r["tokens_per_s"] for r in train_rows),
        "checkpoints": [s.name for s in list_states(run.state_dir)],
    }


def summary_text(summary: dict[str, Any], out_dir: Path) -> str:
    """The end-of-run screen: where the checkpoint is, tokens and their shares, time, validation."""
    shares = ", ".join(f"{n} {100 * v:.1f}%" for n, v in (summary.get("token_shares") or {}).items())
    seconds = summary.get("train_time_s") or 0.0
    took = f"{seconds:.1f} s" if seconds < 60 else "{} min {:02d} s".format(*divmod(round(seconds), 60))
    lines = [f"{summary['phase']}: {summary['steps']} steps, {summary['tokens']:,} tokens ({shares}) in {took}"
             + (" (already trained on these inputs: nothing to do)" if summary.get("reused") else ""),
             f"  checkpoint:  {out_dir}  (AutoModelForCausalLM / AutoTokenizer.from_pretrained)"]
    for domain, v in (summary.get("final_val") or {}).items():
        lines.append(f"  val {domain + ':':<14} loss {v['loss']:.4f}  bpb {v['bpb']:.4f}")
    return "\n".join(lines)
