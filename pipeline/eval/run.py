"""`textbook eval`: score a checkpoint on downstream tasks (CORE-style centered accuracy) and bits per byte.

    resolve the checkpoint -> load every task (seeded subsets, few-shot draws) -> the bundle digest
      -> log-likelihood of every choice -> accuracy, length-normalised accuracy, chance, centered
      -> bits per byte on held-out documents per domain -> RUN_DIR/eval/<checkpoint>.json + a table.

Centered accuracy is ``(acc - chance) / (1 - chance)``: 0 for a model that guesses, 1 for a perfect
one, so tasks with 2 and 5 choices average fairly (DCLM's CORE, nanochat's base eval). Two scores
are only comparable when their ``bundle_digest`` (tasks, files, few-shot seed, prompt format)
matches.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.eval.config import EvalConfig
from pipeline.eval.score import bits_per_byte, loglikelihoods
from pipeline.eval.tasks import NORMALISED, EvalError, Task, load_task
from pipeline.io import (
    check_writable,
    hub_unreachable,
    in_hub_cache,
    read_json,
    stable_hash,
    write_json,
    write_png,
)
from pipeline.lineage import checkpoint_digest, fingerprint, manifest_ref, relative_name
from pipeline.progress import progress
from pipeline.rundir import ID, MODEL_CONFIG, PHASES, TEXT, RunDir, manifest_path
from pipeline.sources import SourceConfig, read_source, validation_mask

# Bumped whenever rendering or scoring changes, so old and new scores never share a digest.
PROMPT_FORMAT = "v1: lm-eval cloze/mc, few-shot joined by a blank line, continuation delimiter ' '"


def evaluate(cfg: Config, checkpoint: str | None = None) -> int:
    """CLI entry: write ``RUN_DIR/eval/<name>-<checkpoint digest>.json`` for ``checkpoint``, redraw
    ``eval/scores.png`` and print the table."""
    e, run = cfg.eval, RunDir(cfg.run_dir)
    if not e.tasks:
        raise EvalError("config key 'eval.tasks': no tasks to score; list at least one (see `textbook config "
                        "--reference`)")
    path, name = resolve_checkpoint(cfg.run_dir, checkpoint)
    check_hub_reachable(hub_needs(e, path))
    check_writable(EvalError, run.eval)  # before the scoring, not after it
    result = score_checkpoint(path, e, cfg.run_dir, cfg.train.sources, cfg.train.val_fraction)
    out = write_json(result, run.eval_result(name, result["checkpoint_digest"]))
    plot_scores(run)
    print(format_table(result))
    print(f"wrote {out}")
    return 0


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def resolve_checkpoint(run_dir: Path, checkpoint: str | None) -> tuple[str, str]:
    """(path or Hub id, name): a phase of this run (default: the last one trained), a folder, or a Hub id."""
    run = RunDir(run_dir)
    if checkpoint is None:
        trained = [p for p in PHASES if (run.checkpoint(p) / MODEL_CONFIG).exists()]
        if not trained:
            raise EvalError(f"{run.checkpoints}: no trained checkpoint; run textbook train, or pass --checkpoint PATH")
        checkpoint = trained[-1]
    if checkpoint in PHASES:
        folder = run.checkpoint(checkpoint)
        if not (folder / MODEL_CONFIG).exists():
            raise EvalError(f"{folder}: no final {checkpoint} checkpoint; run textbook train --phase "
                            f"{checkpoint.removeprefix('phase')}")
        return str(folder), checkpoint
    local = Path(checkpoint).expanduser()
    if local.exists():
        if not (local / MODEL_CONFIG).exists():
            raise EvalError(f"{local}: not a save_pretrained folder (no config.json)")
        return str(local), local.resolve().name
    if not _HUB_ID.match(checkpoint):
        raise EvalError(f"--checkpoint {checkpoint}: no such checkpoint: use {'|'.join(PHASES)} (this run's), a "
                        "save_pretrained folder, or a Hub id ORG/NAME")
    return checkpoint, checkpoint.replace("/", "__")


def hub_needs(e: EvalConfig, checkpoint: str) -> list[str]:
    """What an eval would fetch from the Hub: a Hub checkpoint or tasks not in the local cache."""
    needs = [] if Path(checkpoint).exists() or in_hub_cache(checkpoint) else [f"--checkpoint {checkpoint}"]
    return needs + [f"eval.tasks {t.name} ({t.hf})" for t in e.tasks if t.hf and not in_hub_cache(t.hf, "dataset")]


def check_hub_reachable(needs: list[str]) -> None:
    """One quick check before any task or model loads (offline, the libraries retry for ~30 s each)."""
    reason = hub_unreachable() if needs else None
    if reason:
        raise EvalError(f"the Hugging Face Hub is unreachable ({reason}) and eval needs it for {', '.join(needs)}; "
                        "give each task a local path (and the checkpoint a local folder)")


def load_model(path: str, device_choice: str):
    """(model, tokenizer, device): any AutoModelForCausalLM, bf16 on CUDA."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if use_cuda else torch.float32)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EvalError(f"{path}: cannot load the checkpoint: {first}") from None
    return model.to(device).eval(), tok, device


def score_checkpoint(path: str, e: EvalConfig, run_dir: Path, sources: Mapping[str, SourceConfig],
                     val_fraction: float) -> dict[str, Any]:
    """The result file's content: per-task scores, the mean centered score, bpb per domain, the bundle.

    The bpb documents are the held-out part (``val_fraction``, as training splits them) of each of the
    run's ``sources`` that ``e.bpb_domains`` names.
    """
    tasks = [load_task(t, e.seed) for t in e.tasks]
    bundle = bundle_of(e, tasks)
    model, tok, device = load_model(path, e.device)
    max_length = e.max_length or int(getattr(model.config, "max_position_embeddings", 2048))
    started = time.perf_counter()
    scores = {t.config.name: score_task(model, tok, t, e, max_length, device) for t in tasks}
    seconds = time.perf_counter() - started
    items = sum(s["items"] for s in scores.values())
    result: dict[str, Any] = {
        "checkpoint": relative_name(path, run_dir) if Path(path).exists() else path,
        "checkpoint_digest": checkpoint_identity(path),
        "tasks": scores,
        "score": float(np.mean([s["centered"] for s in scores.values()])) if scores else float("nan"),
        "bpb": domain_bpb(model, tok, e, run_dir, sources, val_fraction, max_length, device),
        "bundle_digest": stable_hash(bundle),
        "bundle": bundle,
        "items_per_s": items / seconds if seconds > 0 else None,
        "seconds": round(seconds, 2),
        "device": str(device),
    }
    result["lineage"] = checkpoint_lineage(e, run_dir, tasks, path)
    return result


def checkpoint_identity(path: str) -> str:
    """The digest that keys a result (:func:`~pipeline.lineage.checkpoint_digest`): of the folder, or of
    the Hub checkpoint's snapshot in the local cache (loading it put it there)."""
    if Path(path).is_dir():
        return checkpoint_digest(path)
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(path, MODEL_CONFIG)
    return checkpoint_digest(Path(found).parent) if isinstance(found, str) else stable_hash({"hub": path})


def checkpoint_lineage(e: EvalConfig, run_dir: Path, tasks: list[Task], path: str) -> dict[str, Any]:
    """What a score is a function of: the eval section, the task files and the checkpoint's manifest."""
    parent = manifest_ref(manifest_path(Path(path)), run_dir) if Path(path).exists() else None
    return fingerprint(config=e.model_dump(mode="json"),
                       inputs={k: v for t in tasks for k, v in t.source_digest.items()},
                       parents={"checkpoint": parent} if parent else {})


def bundle_of(e: EvalConfig, tasks: list[Task]) -> dict[str, Any]:
    """What a score depends on besides the model: task settings, the files' digests, seed, prompt format."""
    return {"seed": e.seed, "prompt_format": PROMPT_FORMAT,
            "tasks": [{**t.config.model_dump(mode="json", exclude={"path"}), "files": t.source_digest}
                      for t in tasks]}


def score_task(model, tok, task: Task, e: EvalConfig, max_length: int, device: torch.device) -> dict[str, Any]:
    """Accuracy, length-normalised accuracy, chance and centered accuracy of one task."""
    requests = task.requests(e.seed)
    flat = [(ctx, cont) for _, ctx, conts in requests for cont in conts]
    lls: list[float] = []
    with progress(total=len(flat), desc=f"eval {task.config.name}", unit="choice") as bar:
        step = max(e.batch_size * 8, 1)
        for start in range(0, len(flat), step):
            lls.extend(loglikelihoods(model, tok, flat[start:start + step], e.batch_size, max_length, device))
            bar.update(min(step, len(flat) - start))
    correct = correct_norm = chance = 0.0
    k = 0
    for (_, _, conts), item in zip(requests, task.items, strict=True):
        ll = np.array(lls[k:k + len(conts)])
        k += len(conts)
        # lm-eval's acc_norm: the choice's own length in characters, without the delimiter space
        lengths = np.array([max(len(c.removeprefix(" ")), 1) for c in conts], dtype=float)
        correct += float(np.argmax(ll) == item.gold)
        correct_norm += float(np.argmax(ll / lengths) == item.gold)
        chance += 1.0 / len(conts)
    n = len(task.items)
    accuracy, accuracy_norm, chance = correct / n, correct_norm / n, chance / n
    metric = "accuracy_norm" if task.config.format in NORMALISED and task.config.form == "cloze" else "accuracy"
    chosen = accuracy_norm if metric == "accuracy_norm" else accuracy
    return {"accuracy": accuracy, "accuracy_norm": accuracy_norm, "chance": chance,
            "centered": (chosen - chance) / (1 - chance), "metric": metric, "items": n,
            "num_fewshot": task.config.num_fewshot, "form": task.config.form}


def domain_bpb(model, tok, e: EvalConfig, run_dir: Path, sources: Mapping[str, SourceConfig], val_fraction: float,
               max_length: int, device: torch.device) -> dict[str, float]:
    """Bits per byte on each domain's held-out documents (the ones training never saw)."""
    out = {}
    for domain, source in e.bpb_domains.items():
        spec = sources.get(source)
        if spec is None or not spec.paths or e.bpb_docs == 0:
            continue
        try:
            docs = read_source(source, spec, run_dir)
        except PipelineError as err:
            print(f"eval: bpb skips domain {domain!r}: {err}", file=sys.stderr)
            continue
        held = docs[validation_mask(docs[ID].tolist(), val_fraction)]
        if held.empty:
            continue
        out[domain] = bits_per_byte(model, tok, held[TEXT].tolist()[: e.bpb_docs], max_length, device,
                                    e.batch_size)
    return out


def format_table(result: dict[str, Any]) -> str:
    """The printed table: one row per task, then the headline score, bpb and the bundle digest."""
    lines = [f"eval of {result['checkpoint']}  (bundle {result['bundle_digest']})",
             f"{'task':<16}{'items':>7}{'acc':>8}{'acc_norm':>10}{'chance':>8}{'centered':>10}"]
    for name, s in result["tasks"].items():
        lines.append(f"{name:<16}{s['items']:>7}{s['accuracy']:>8.3f}{s['accuracy_norm']:>10.3f}"
                     f"{s['chance']:>8.3f}{s['centered']:>10.3f}")
    lines.append(f"{'score (mean centered)':<49}{result['score']:>10.3f}")
    if result["bpb"]:
        lines.append("bits per byte: " + ", ".join(f"{d} {v:.3f}" for d, v in result["bpb"].items()))
    return "\n".join(lines)


def plot_scores(run: RunDir) -> Path | None:
    """``eval/scores.png``: the score of every checkpoint evaluated in the run, one panel per task bundle
    (only scores under one bundle compare)."""
    results = [r for r in (read_json(p) for p in run.eval_results())
               if isinstance(r, dict) and "score" in r and "bundle_digest" in r]
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bundles = sorted({r["bundle_digest"] for r in results})
    fig, axes = plt.subplots(1, len(bundles), figsize=(4 + 2.5 * len(bundles), 4), squeeze=False)
    for ax, bundle in zip(axes[0], bundles, strict=True):
        shown = [r for r in results if r["bundle_digest"] == bundle]
        names = [f"{Path(str(r['checkpoint'])).name}\n{str(r.get('checkpoint_digest', ''))[:8]}" for r in shown]
        ax.bar(range(len(shown)), [r["score"] for r in shown], color="C0")
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(shown)), names, fontsize=8)
        ax.set_ylabel("score (mean centered accuracy)")
        ax.set_title(f"bundle {bundle}", fontsize=9)
    fig.tight_layout()
    return write_png(fig, run.eval_figure)
