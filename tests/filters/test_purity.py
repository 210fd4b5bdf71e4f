"""`filters` is pure: importing any of its modules loads neither `pipeline` nor dask/distributed."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import filters

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(f"filters.{m.name}" for m in pkgutil.iter_modules(filters.__path__))


def test_every_filters_module_imports_without_pipeline_or_dask() -> None:
    script = ("import importlib, sys\n"
              f"for name in {MODULES!r}:\n"
              "    importlib.import_module(name)\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pipeline', 'dask', 'distributed')))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"filters loaded: {done.stdout.strip()}"
    assert "filters.base" in MODULES and "filters.edu_score" in MODULES
