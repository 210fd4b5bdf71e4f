"""`textbook` (also `python -m pipeline`): one subcommand per stage.

Every stage takes ``-c CONFIG`` and any number of dotted ``key=value`` overrides. Errors a user
can act on are printed on one line with a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:  # imported in main(), under _imports_uncollected: every stage's config loads pandas
    from pipeline.config import Config

# subcommand -> (module:function, help). The function takes (cfg, **options) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("pipeline.generate.runner:generate", "generate synthetic textbook data"),
    "annotate": ("pipeline.classify.annotate:annotate", "label web text for educational value with an LLM"),
    "train-classifier": ("pipeline.classify.train:train_classifier", "train the fastText edu classifier"),
    "score": ("pipeline.classify.score:score_files", "score Parquet/JSONL text with the edu classifier"),
    "filter": ("pipeline.filter.runner:run_filter", "heuristics, edu score, dedup, decontamination"),
    "train": ("pipeline.train.loop:train", "tokenizer, phase-1/phase-2 pretraining and SFT"),
    "eval": ("pipeline.eval.run:evaluate", "score a checkpoint on downstream tasks (CORE-style) and bits per byte"),
    "compare": ("pipeline.train.compare:compare", "phase-2 data A/B from one phase-1 checkpoint"),
    "card": ("pipeline.hub.card:write_card", "write the dataset card and model card"),
    "push": ("pipeline.hub.push:push", "upload the run to the Hugging Face Hub"),
    "demo": ("pipeline.demo:demo", "run every stage end to end on a small config"),
    "status": ("pipeline.status:status", "what each stage of the run directory holds, up to date or stale, "
               "and what it cost"),
    "config": ("pipeline.cli:show_config", "print the resolved config (secrets removed) or the key reference"),
}


# Stages that keep state between runs and so check their lineage before resuming.
RESUMABLE = ("generate", "annotate", "train-classifier", "filter", "train", "compare", "card", "push", "demo")

# Stages that write into the run directory: each holds it exclusively while it runs (pipeline.runlock).
LOCKED = (*RESUMABLE, "eval")
# ... of which these only read a run that exists (they refuse a missing one themselves)
_READ_RUN = ("card", "push")

# ``key=value`` with a dotted config key: an override wherever it stands on the line.
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(other arguments, overrides): an override may follow an option, even one taking several values."""
    rest, overrides = [], []
    for arg in argv:
        (overrides if _OVERRIDE.match(arg) else rest).append(arg)
    return rest, overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textbook", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-c", "--config", help="YAML config (default: built-in defaults)")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted config overrides, values parsed as YAML")
        p.add_argument("--scheduler", help="address of an existing dask.distributed scheduler")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        if name in RESUMABLE:
            p.add_argument("--restart", action="store_true",
                           help="discard state built from other inputs or settings and start this stage over")
        _stage_options(name, p)
    return parser


def _stage_options(name: str, p: argparse.ArgumentParser) -> None:
    if name in ("generate", "annotate"):
        p.add_argument("--dry-run", action="store_true",
                       help="render every prompt and print requests, tokens and cost; call no model")
    if name == "score":
        p.add_argument("--input", nargs="+", required=True, help="Parquet/JSONL files or globs")
        p.add_argument("--output", required=True, help="output Parquet path (adds edu_score)")
    if name == "train":
        p.add_argument("--phase", required=True, choices=["1", "2", "sft"], help="which phase to run")
    if name == "eval":
        p.add_argument("--checkpoint", help="phase1, phase2, sft (default: the last trained) or a "
                       "save_pretrained folder / Hub id")
    if name == "push":
        p.add_argument("--repo-id", help="ORG/NAME of the dataset repo (default: hub.repo_id)")
        p.add_argument("--private", action="store_true", help="create the repo as private")
        p.add_argument("--dry-run", action="store_true",
                       help="write the exact upload folder to RUN_DIR/push/ and list it")
        p.add_argument("--model", action="store_true",
                       help="push the final checkpoint with its model card (dry run: RUN_DIR/push_model/)")
    if name == "config":
        p.add_argument("--reference", action="store_true", help="print every key with its default as markdown")
    if name == "demo":
        p.add_argument("--model", help="generator model id or local path")
        p.add_argument("--web", nargs="+", help="web text paths (Parquet/JSONL)")


def show_config(cfg: Config, reference: bool = False) -> int:
    """Print the config after overrides as YAML (secrets removed), or the key reference table."""
    import yaml

    from pipeline.config import public_dict, reference_markdown

    print(reference_markdown() if reference else yaml.safe_dump(public_dict(cfg), sort_keys=False), end="")
    return 0


_COMMON = ("command", "config", "overrides", "scheduler", "debug")


@contextmanager
def _imports_uncollected() -> Iterator[None]:
    """Hold the cyclic garbage collector while the config and the stage's modules load, then keep
    what they built out of every later collection (``gc.freeze``).

    The imports build ~100,000 long-lived container objects: collected while they arrive, that cost
    ~0.2 s of the ~2 s before ``generate``'s first request (measured), and every later full
    collection (~0.08 s each, during a run or the diversity report after it) walked them all again.
    Imports make next to no garbage (~1,400 unreachable objects), so freezing keeps nothing that
    matters.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


# What Ctrl-C leaves, per stage: the one line a user reads after it.
_RESUME = "rerun the same command to resume"
INTERRUPTED = {
    "generate": f"every answered request is kept (journaled as it arrived); {_RESUME}",
    "annotate": f"every answered request is kept (journaled as it arrived); {_RESUME}",
    "filter": f"scored shards are kept; {_RESUME}",
    "train": f"training resumes from the latest saved state (every train.checkpoint_every steps); {_RESUME}",
    "compare": f"finished arms are kept and the running one resumes from its latest saved state; {_RESUME}",
    "demo": f"finished stages are kept and the running one resumes as it would alone; {_RESUME}",
}


class _QuietInterrupt:
    """From Ctrl-C on, the teardown is silent: the event loops, Dask workers and actors a stage was
    running warn and log as they are torn down ("Task exception was never retrieved", unreleased
    semaphore leases), which buried the one line that says what was kept. In the main thread only;
    ``restore`` puts the previous handler, warnings and logging back (for callers in-process)."""

    def __init__(self) -> None:
        self.previous = None
        self.filters: list | None = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._interrupt)

    def _interrupt(self, signum: int, frame: object) -> None:
        self.filters = list(warnings.filters)
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        raise KeyboardInterrupt

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if self.filters is not None:
            warnings.filters[:] = self.filters
            logging.disable(logging.NOTSET)


def _exclusive(command: str, run_dir: Path, rest: list[str]) -> AbstractContextManager:
    """The run directory's lock for a stage that writes into it; nothing for the others. The
    command it records leaves the overrides out (they may carry a key). Under torchrun rank 0
    holds it for every rank."""
    if command not in LOCKED or os.environ.get("RANK", "0") != "0":
        return nullcontext()
    from pipeline.runlock import run_lock

    return run_lock(run_dir, " ".join(["textbook", *rest]), create=command not in _READ_RUN)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; ``argv`` None: this process's command line, and the process ends with the stage."""
    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(rest)
    quiet = _QuietInterrupt()
    try:
        with _imports_uncollected():
            from pipeline.config import load_config

            overrides = [*args.overrides, *overrides]
            if args.scheduler:
                overrides.append(f"scheduler={args.scheduler}")
            cfg = load_config(args.config, overrides)
            module_name, func_name = COMMANDS[args.command][0].split(":")
            stage = getattr(importlib.import_module(module_name), func_name)
        options = {k: v for k, v in vars(args).items() if k not in _COMMON}
        with _exclusive(args.command, cfg.run_dir, rest):
            code = stage(cfg, **options)
        return int(code or 0)
    except PipelineError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {INTERRUPTED.get(args.command, 'nothing was written; rerun the command')}",
              file=sys.stderr)
        return 130
    finally:
        quiet.restore()
        if argv is None:
            # the process exits next: frozen, its objects are not walked by the interpreter's last
            # collection at exit (~0.3 s after a generate run, measured); the OS takes the memory back
            gc.freeze()
        else:
            gc.unfreeze()  # called in-process (the tests): the caller's collector as it was


if __name__ == "__main__":
    raise SystemExit(main())
