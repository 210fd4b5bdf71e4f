"""What `textbook generate`'s start and exit rely on: the CLI module loads nothing heavy itself, the
stage's imports are kept out of the garbage collector's way, and the exact diversity numbers survive
the faster counting."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.generate.diversity import distinct_n, words_keeping_contractions

ROOT = Path(__file__).resolve().parents[2]


def python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_cli_module_imports_no_stage_or_config_code():
    """Importing ``pipeline.cli`` (what the ``textbook`` script does first) loads no config, pandas or
    pydantic: ``main`` loads them with the collector held, which only works if nothing came before."""
    loaded = python("import sys, pipeline.cli; print(sorted(m for m in ('pandas', 'pydantic', 'yaml', "
                    "'pipeline.config', 'distributed') if m in sys.modules))")
    assert loaded == "[]"


def test_main_as_the_program_leaves_its_objects_frozen_for_exit():
    """``main()`` with no argv owns the process: what it built stays frozen, so the interpreter's last
    collection at exit does not walk it."""
    frozen = python("import gc, sys\nfrom pipeline.cli import main\nsys.argv = ['textbook', 'config']\n"
                    "code = main()\nprint(code, gc.isenabled(), gc.get_freeze_count() > 10_000)")
    assert frozen.splitlines()[-1] == "0 True True"


def test_main_in_process_gives_the_collector_back(capsys):
    """Called with argv (tests, other tools), ``main`` leaves the caller's collector as it found it,
    on success and on a config error alike."""
    assert gc.isenabled()
    assert main(["config", "generate.num_samples=3"]) == 0
    assert "num_samples: 3" in capsys.readouterr().out
    assert main(["config", "generate.num_sampls=3"]) == 2
    assert "did you mean 'generate.num_samples'" in capsys.readouterr().err
    assert gc.isenabled() and gc.get_freeze_count() == 0


@pytest.mark.parametrize("n", [1, 2, 3])
def test_distinct_n_is_unique_ngrams_over_all_ngrams(n):
    """The set-based count gives exactly the ratio of the definition, short texts and repeats included."""
    texts = ["Once upon a time a cat sat.", "Once upon a time a dog sat.", "Hi", "", "a a a a a a",
             "don't stop: it's fine, it's fine"]
    tokenized = [words_keeping_contractions(t) for t in texts]
    grams = [tuple(t[i:i + n]) for t in tokenized for i in range(len(t) - n + 1)]
    assert distinct_n(tokenized, n) == len(set(grams)) / len(grams)
    assert distinct_n([["hi"]], 2) == 0.0 and distinct_n([], n) == 0.0
