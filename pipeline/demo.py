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

import pandas as pd

from pipeline.config import Config
from pipeline.errors import ConfigError, HubError
from pipeline.io import expand_inputs, hub_unreachable, in_hub_cache, iter_batches, write_parquet
from pipeline.llm.config import LLMConfig
from pipeline.models import local_model_path
from pipeline.progress import stage_line
from pipeline.rundir import SHARD_GLOB, RunDir, shard_path

OFFLINE_HINT = "run it offline on local files: make demo MODEL=/path/to/model WEB=/path/to/web.parquet"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class HubUnreachableError(HubError):
    """The demo needs the Hugging Face Hub (a model or web text not on this machine) and cannot reach it."""


def demo(cfg: Config, model: str | None = None, web: list[str] | None = None, restart: bool = False) -> int:
    """Run the whole recipe on ``cfg`` (``--model``/``--web`` override the generator and web text)."""
    if model:
        cfg.generate.model = model
    if web:
        cfg.filter.input = list(web)
    if not cfg.filter.input:
        raise ConfigError("config key 'filter.input': the demo needs web text (pass WEB=... to make demo)")
    run_dir = Path(cfg.run_dir)
    check_hub_reachable(hub_needs(cfg.generate, cfg.filter.input, run_dir))  # before the stages' heavy imports: an answer in seconds
    from pipeline.classify.train import train_classifier
    from pipeline.filter.runner import run_filter
    from pipeline.generate.runner import generate
    from pipeline.hub.card import write_card
    from pipeline.hub.layout import CARD_FILE
    from pipeline.hub.push import push
    from pipeline.train.loop import train

    run = RunDir(run_dir)
    cfg.filter.input = web_sample(cfg.filter.input, run_dir, cfg.filter.limit or 1000, cfg.filter.text_column)
    generated = str(run.generated / SHARD_GLOB)
    cfg.classifier.positives = cfg.classifier.positives or [generated]
    cfg.classifier.negatives = cfg.classifier.negatives or list(cfg.filter.input)

    steps: list[tuple[str, Callable[[], object], Path]] = [
        ("generate", lambda: generate(cfg, restart=restart), run.generated),
        ("train-classifier", lambda: train_classifier(cfg, restart=restart), run.classifier_report),
        ("filter", lambda: run_filter(cfg, restart=restart), run.filter_stats),
        ("train phase 1", lambda: train(cfg, phase="1", restart=restart), run.checkpoint("phase1")),
        ("train phase 2", lambda: train(cfg, phase="2", restart=restart), run.checkpoint("phase2")),
        ("sft", lambda: train(cfg, phase="sft", restart=restart), run.checkpoint("sft")),
        ("card", lambda: write_card(cfg, restart=restart), run.card / CARD_FILE),
        ("push --dry-run", lambda: push(cfg, dry_run=True, restart=restart), run.push),
    ]
    timings: list[tuple[str, float, str]] = []
    began = time.perf_counter()
    for k, (name, step, made) in enumerate(steps):
        print("\n" + stage_line(name, k, len(steps), time.perf_counter() - began), flush=True)
        start = time.perf_counter()
        code = step()
        if code:
            print(f"demo: stage {name!r} failed with exit code {code}")
            return int(code)
        timings.append((name, time.perf_counter() - start, str(made)))

    width = max(len(n) for n, _, _ in timings)
    print("\n=== demo summary ===")
    print(f"{'stage':<{width}}  {'seconds':>8}  artifact")
    for name, seconds, artifact in timings:
        print(f"{name:<{width}}  {seconds:8.1f}  {artifact}")
    print(f"{'total':<{width}}  {sum(s for _, s, _ in timings):8.1f}")
    return 0


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


def check_hub_reachable(needs: list[str], timeout_s: float = 3.0) -> None:
    """Stop before any stage when the Hub is needed and offline mode is on or the endpoint does not answer.

    Without this, an offline demo ended after minutes of retries in a long ``httpx`` traceback.
    """
    if not needs:
        return
    reason = hub_unreachable(timeout_s)
    if reason:
        raise HubUnreachableError(f"the Hugging Face Hub is unreachable ({reason}) and the demo needs it for "
                                  f"{', '.join(needs)}; {OFFLINE_HINT}")


def _cached_model(model: str) -> bool:
    """True when the model is in the local Hub cache (the library then loads it offline)."""
    return bool(_HUB_ID.match(model)) and in_hub_cache(model)


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
    out = shard_path(RunDir(run_dir).web_sample, 0)
    if not out.exists():
        frames, remaining = [], limit
        for source in sources:
            for batch in iter_batches(source, [text_column], limit=remaining):
                frames.append(batch)
                remaining -= len(batch)
            if remaining <= 0:
                break
        write_parquet(pd.concat(frames, ignore_index=True), out)
    return [str(out)]
