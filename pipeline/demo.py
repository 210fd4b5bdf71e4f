"""`make demo`: every stage end to end on a small config, then a summary of what was made.

generate → train the classifier DCLM-style (generated textbooks vs web text) → filter web and
generated text → phase 1 → phase 2 → SFT → card → push --dry-run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Config
from pipeline.errors import ConfigError, TrainError


def demo(cfg: Config, model: str | None = None, web: list[str] | None = None) -> int:
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


def _sft(train: Callable[..., int | None], cfg: Config) -> int | str | None:
    """SFT needs conversations in the Student:/Teacher: format; a small generator may not follow it.

    The demo then goes on without an SFT checkpoint (the card says so) rather than failing after
    the expensive stages; `textbook train --phase sft` on its own still fails loudly.
    """
    try:
        return train(cfg, phase="sft")
    except TrainError as e:
        if not str(e).startswith(f"train.sources.{cfg.train.sft.source}"):
            raise
        print(f"sft skipped: {e}")
        return SKIPPED
