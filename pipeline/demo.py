"""`make demo`: every stage end to end on a small config, then a summary of what was made.

generate → train the classifier DCLM-style (generated textbooks vs web text) → filter web and
generated text → phase 1 → phase 2 → SFT → card → push --dry-run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipeline.config import Config
from pipeline.errors import ConfigError, EmptySourceError
from pipeline.io import expand_inputs, iter_batches, write_parquet


def demo(cfg: Config, model: str | None = None, web: list[str] | None = None, restart: bool = False) -> int:
    """Run the whole recipe on ``cfg`` (``--model``/``--web`` override the generator and web text)."""
    from pipeline.classify.train import train_classifier
    from pipeline.filter.runner import run_filter
    from pipeline.generate.runner import generate
    from pipeline.hub.card import write_card
    from pipeline.hub.push import push
    from pipeline.train.loop import train

    if model:
        cfg.generate.model = model
    if web:
        cfg.filter.input = list(web)
    if not cfg.filter.input:
        raise ConfigError("config key 'filter.input': the demo needs web text (pass WEB=... to make demo)")
    run_dir = Path(cfg.run_dir)
    cfg.filter.input = web_sample(cfg.filter.input, run_dir, cfg.filter.limit or 1000, cfg.filter.text_column)
    generated = str(run_dir / "generated" / "part-*.parquet")
    cfg.classifier.positives = cfg.classifier.positives or [generated]
    cfg.classifier.negatives = cfg.classifier.negatives or list(cfg.filter.input)

    steps: list[tuple[str, Callable[[], object], str]] = [
        ("generate", lambda: generate(cfg), "generated/"),
        ("train-classifier", lambda: train_classifier(cfg), "classifier/report.json"),
        ("filter", lambda: run_filter(cfg), "filtered/stats.json"),
        ("train phase 1", lambda: train(cfg, phase="1"), "checkpoints/phase1/"),
        ("train phase 2", lambda: train(cfg, phase="2"), "checkpoints/phase2/"),
        ("sft", lambda: _sft(train, cfg), "checkpoints/sft/"),
        ("card", lambda: write_card(cfg), "card/README.md"),
        ("push --dry-run", lambda: push(cfg, dry_run=True), "push/"),
    ]
    timings: list[tuple[str, float, str]] = []
    for name, step, artifact in steps:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        code = step()
        if code == SKIPPED:
            artifact = "skipped (see above)"
        elif code:
            print(f"demo: stage {name!r} failed with exit code {code}")
            return int(code)
        else:
            artifact = str(run_dir / artifact)
        timings.append((name, time.perf_counter() - start, artifact))

    width = max(len(n) for n, _, _ in timings)
    print("\n=== demo summary ===")
    print(f"{'stage':<{width}}  {'seconds':>8}  artifact")
    for name, seconds, artifact in timings:
        print(f"{name:<{width}}  {seconds:8.1f}  {artifact}")
    print(f"{'total':<{width}}  {sum(s for _, s, _ in timings):8.1f}")
    return 0


SKIPPED = "skipped"


def web_sample(inputs: list[str], run_dir: Path, limit: int, text_column: str) -> list[str]:
    """Local inputs as they are; Hub inputs streamed once into ``RUN_DIR/web_sample/`` (``limit`` docs).

    The classifier and the filter both read the web text: a local sample means the Hub is read
    once, only as far as the demo needs, and a rerun works offline.
    """
    sources = expand_inputs(inputs)
    if not any(s.kind == "hf_dataset" or s.path.startswith("hf://") for s in sources):
        return list(inputs)
    out = run_dir / "web_sample" / "part-00000.parquet"
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


def _sft(train: Callable[..., int | None], cfg: Config) -> int | str | None:
    """SFT needs conversations in the Student:/Teacher: format; a small generator may not follow it.

    The demo then goes on without an SFT checkpoint (the card says so) rather than failing after
    the expensive stages; `textbook train --phase sft` on its own still fails loudly.
    """
    try:
        return train(cfg, phase="sft")
    except EmptySourceError as e:
        print(f"sft skipped: {e}")
        return SKIPPED
