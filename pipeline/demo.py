"""`make demo`: every stage end to end on a small config, then a summary of what was made.

generate → train the classifier DCLM-style (generated textbooks vs web text) → filter web and
generated text → phase 1 → phase 2 → SFT → card → push --dry-run. SFT always runs: the generated
conversations are built turn by turn (their roles exist by construction), so a generator that ignores
a turn format cannot leave it without data.
"""

from __future__ import annotations

import glob
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import installed_docs
from pipeline.config import Config
from pipeline.errors import ConfigError, HubError
from pipeline.io import (
    expand_inputs,
    hub_unreachable,
    iter_batches,
    read_json,
    read_shards,
    write_json,
    write_parquet,
)
from pipeline.llm.config import LLMConfig
from pipeline.llm.flags import cut_and_looping
from pipeline.models import local_model_path
from pipeline.progress import stage_line
from pipeline.rundir import (
    CONVERSATION,
    FLAGS,
    MODEL_CONFIG,
    SHARD_GLOB,
    TEMPLATE,
    TRAIN_SUMMARY,
    RunDir,
    list_shards,
    shard_path,
)

OFFLINE_HINT = "run it offline on local files: make demo MODEL=/path/to/model WEB=/path/to/web.parquet"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class HubUnreachableError(HubError):
    """The demo needs the Hugging Face Hub (a model or web text not on this machine) and cannot reach it."""


def demo(cfg: Config, model: str | None = None, web: list[str] | None = None, restart: bool = False) -> int:
    """Run the whole recipe on ``cfg`` (``--model``/``--web`` override the generator and web text).

    With the Hub unreachable, the config's own web text (a Hub sample) gives way to the documentation
    installed on this machine (``pipeline.installed_docs``); web text or a model the user named on the
    Hub does not: the demo stops in one line, before any stage.
    """
    if model:
        cfg.generate.model = model
    if web:
        cfg.filter.input = list(web)
    if not cfg.filter.input:
        raise ConfigError("config key 'filter.input': the demo needs web text (pass WEB=... to make demo)")
    run_dir = Path(cfg.run_dir)
    run = RunDir(run_dir)
    needs = hub_needs(cfg.generate, cfg.filter.input, run_dir)
    unreachable = hub_unreachable() if needs else None  # before the stages' heavy imports: an answer in seconds
    if unreachable and (web or any(n.startswith("generate.") for n in needs)):
        raise HubUnreachableError(f"the Hugging Face Hub is unreachable ({unreachable}) and the demo needs it "
                                  f"for {', '.join(needs)}; {OFFLINE_HINT}")
    if unreachable:
        cfg.filter.input = [str(write_installed_docs(run))]
        print(f"demo: web text: {installed_docs.NAME}, {cfg.filter.input[0]} (the Hub is unreachable: "
              f"{unreachable}; with it the demo samples {', '.join(n.partition('=')[2] for n in needs)})")
    else:
        cfg.filter.input = web_sample(cfg.filter.input, run_dir, cfg.filter.limit or 1000, cfg.filter.text_column)
        print(f"demo: web text: {', '.join(web_source_names(run).get(Path(p).name, p) for p in cfg.filter.input)}")
    from pipeline.classify.train import train_classifier
    from pipeline.filter.runner import run_filter
    from pipeline.generate.runner import generate
    from pipeline.hub.card import write_card
    from pipeline.hub.push import push
    from pipeline.train.loop import train

    generated = str(run.generated / SHARD_GLOB)
    cfg.classifier.positives = cfg.classifier.positives or [generated]
    cfg.classifier.negatives = cfg.classifier.negatives or list(cfg.filter.input)

    steps: list[tuple[str, Callable[[], object]]] = [
        ("generate", lambda: generate(cfg, restart=restart)),
        ("train-classifier", lambda: train_classifier(cfg, restart=restart)),
        ("filter", lambda: run_filter(cfg, restart=restart)),
        ("train phase 1", lambda: train(cfg, phase="1", restart=restart)),
        ("train phase 2", lambda: train(cfg, phase="2", restart=restart)),
        ("sft", lambda: train(cfg, phase="sft", restart=restart)),
        ("card", lambda: write_card(cfg, restart=restart)),
        ("push --dry-run", lambda: push(cfg, dry_run=True, restart=restart)),
    ]
    timings: list[tuple[str, float]] = []
    started = time.perf_counter()
    for k, (name, step) in enumerate(steps, 1):
        print("\n" + stage_line(name, k - 1, len(steps), time.perf_counter() - started, alike=False), flush=True)
        start = time.perf_counter()
        code = step()
        if code:
            print(f"demo: stage {name!r} failed with exit code {code}")
            return int(code)
        timings.append((name, time.perf_counter() - start))
    print_summary(run, timings, time.perf_counter() - started)
    return 0


def print_summary(run: RunDir, timings: list[tuple[str, float]], total_s: float) -> None:
    """One row a stage: its seconds and what it made (read back from the run directory)."""
    made = stage_outputs(run)
    width = max(len(n) for n, _ in timings)
    print("\n=== demo summary ===")
    print(f"{'stage':<{width}}  {'seconds':>8}  made")
    for name, seconds in timings:
        print(f"{name:<{width}}  {seconds:8.1f}  {made.get(name, '')}")
    print(f"{'total':<{width}}  {total_s:8.1f}  {run.root}")


def stage_outputs(run: RunDir) -> dict[str, str]:
    """What each stage made, in a few words, from the files it wrote (a stage with nothing left is absent)."""
    def read(path: Path) -> dict[str, Any]:
        return read_json(path) if path.exists() else {}

    made: dict[str, str] = {}
    rows = read_shards(run.generated, [TEMPLATE, FLAGS]) if list_shards(run.generated) else None
    if rows is not None:
        cut, looping = cut_and_looping(rows[FLAGS].tolist()) if FLAGS in rows else (0, 0)
        flagged = f"{cut} cut at max_tokens, {looping} looping" if cut or looping else "none flagged"
        made["generate"] = f"{len(rows)} rows ({(rows[TEMPLATE] == CONVERSATION).sum()} conversations; {flagged})"
    validation = read(run.classifier_report).get("validation") or {}
    if validation:
        made["train-classifier"] = (f"fastText, F1 {validation.get('f1', float('nan')):.2f} on "
                                    f"{validation.get('n', 0)} held-out documents")
    stats = read(run.filter_stats)
    if stats:
        made["filter"] = f"kept {stats['documents_out']:,} of {stats['documents_in']:,} documents"
    for phase, name in (("phase1", "train phase 1"), ("phase2", "train phase 2"), ("sft", "sft")):
        summary = read(run.checkpoint(phase) / TRAIN_SUMMARY)
        if summary.get("tokens"):
            made[name] = (f"{summary['tokens']:,} tokens, {summary['steps']} steps, final loss "
                          f"{summary.get('final_train_loss', float('nan')):.2f}")
    card = run.card / "README.md"
    if card.exists():
        made["card"] = str(card)
    files = [p for p in run.push.rglob("*") if p.is_file()] if run.push.exists() else []
    if files:
        made["push --dry-run"] = f"{len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB in {run.push}"
    return made


def hub_needs(gen: LLMConfig, web: list[str], run_dir: Path) -> list[str]:
    """The config keys whose values the demo would fetch from the Hub (``key=value``): a generator
    model that is neither a local folder nor in the Hub cache, and web text (``filter.input``) on the
    Hub not yet sampled into ``RUN_DIR/web_sample/``."""
    needs = []
    model = gen.model
    if gen.backend == "transformers" and model and local_model_path(model) is None \
            and not _cached_model(model):
        needs.append(f"generate.model={model}")
    if not shard_path(RunDir(run_dir).web_sample, 0).exists():
        needs += [f"filter.input={p}" for p in map(str, web) if _on_hub(p)]
    return needs


def _cached_model(model: str) -> bool:
    """True when the model's config is in the local Hub cache (the library then loads it offline)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if not _HUB_ID.match(model):
        return False
    found = try_to_load_from_cache(model, MODEL_CONFIG, cache_dir=constants.HF_HUB_CACHE)
    return isinstance(found, str)


def _on_hub(path: str) -> bool:
    """``hf://...``, or an ``ORG/NAME`` dataset id that is not a local path (as ``expand_inputs`` reads it)."""
    if path.startswith("hf://"):
        return True
    return bool(_HUB_ID.match(path)) and not Path(path).expanduser().exists() and not glob.glob(path)


def web_sample(inputs: list[str], run_dir: Path, limit: int, text_column: str) -> list[str]:
    """Local inputs as they are; Hub inputs streamed once into ``RUN_DIR/web_sample/`` (``limit`` docs).

    The classifier and the filter both read the web text: a local sample means the Hub is read
    once, only as far as the demo needs, and a rerun works offline.
    """
    sources = expand_inputs(inputs)
    if not any(s.on_hub for s in sources):
        return list(inputs)
    run = RunDir(run_dir)
    out = shard_path(run.web_sample, 0)
    if not out.exists():
        frames, remaining = [], limit
        for source in sources:
            for batch in iter_batches(source, [text_column], limit=remaining):
                frames.append(batch)
                remaining -= len(batch)
            if remaining <= 0:
                break
        sample = pd.concat(frames, ignore_index=True)
        write_parquet(sample, out)
        name_web_source(run, out, f"{len(sample):,} documents sampled from {', '.join(map(str, inputs))}")
    return [str(out)]


def write_installed_docs(run: RunDir) -> Path:
    """``RUN_DIR/web_sample/installed-docs.parquet`` (written once), named in the web sources file."""
    out = run.installed_docs
    if not out.exists():
        docs = installed_docs.installed_docs()
        write_parquet(docs, out)
        name_web_source(run, out, f"{installed_docs.NAME}: {len(docs):,} documents installed on this machine")
    return out


def name_web_source(run: RunDir, path: Path, description: str) -> None:
    """Record what a file of ``web_sample/`` holds, for the demo's line and the card's sources table."""
    names = web_source_names(run)
    write_json({**names, path.name: description}, run.web_sources)


def web_source_names(run: RunDir) -> dict[str, str]:
    """File name in ``web_sample/`` -> what it holds (empty when the demo sampled nothing)."""
    return read_json(run.web_sources) if run.web_sources.exists() else {}
