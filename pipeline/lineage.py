"""Lineage: what made an artifact, and the check that a rerun resumes only on the same inputs.

A stage's *fingerprint* is what shapes its output: the config section that matters (``config``),
the content digests of the files it read (``inputs``, keyed by a path relative to the run
directory where it lies inside it) and the digests of the upstream manifests it built on
(``parents``). Each stage stores its fingerprint next to its resumable state and in its
``manifest.json``; before it resumes it compares the stored one with the one it would write now.
A difference is a :class:`LineageError` whose one line says what changed and what to do, unless the
user passed ``--restart``, in which case the stage discards its stale state and starts over.

Digests are of content (sha256 of the bytes), never of mtimes, so copying a run directory keeps its
lineage and touching a file does not break it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

DIGEST_CHARS = 16


class LineageError(PipelineError):
    """A rerun would resume on inputs or settings that differ from what the saved state was built from."""


def content_digest(path: Path | str) -> str:
    """sha256 of a file's bytes (first ``DIGEST_CHARS`` hex digits): the identity of a shard."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:DIGEST_CHARS]


def relative_name(path: Path | str, run_dir: Path | str | None) -> str:
    """``path`` relative to ``run_dir`` when inside it (so lineage survives moving the run), else as given."""
    p = Path(path)
    if run_dir is not None:
        try:
            return p.resolve().relative_to(Path(run_dir).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def file_digests(paths: Iterable[Path | str], run_dir: Path | str | None = None) -> dict[str, str]:
    """{name: content digest} for local files, named relative to ``run_dir`` where possible."""
    return {relative_name(p, run_dir): content_digest(p) for p in sorted(map(str, paths))}


# What makes a save_pretrained checkpoint the model it is: config, weights and tokenizer (not the
# metrics, cards and eval results that sit beside them)
CHECKPOINT_FILES = ("config.json", "*.safetensors", "pytorch_model*.bin", "tokenizer.json", "tokenizer.model",
                    "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                    "chat_template.jinja")


def checkpoint_digest(folder: Path | str) -> str:
    """The identity of a checkpoint folder: a digest of its model and tokenizer files' content digests,
    so a copy has the same identity and a retrained (or another) model with the same name does not."""
    files = sorted({p for pattern in CHECKPOINT_FILES for p in Path(folder).glob(pattern) if p.is_file()})
    listing = json.dumps({p.name: content_digest(p) for p in files}, sort_keys=True)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()[:DIGEST_CHARS]


def manifest_ref(path: Path | str, run_dir: Path | str | None = None) -> dict[str, str] | None:
    """A parent reference ``{"manifest": name, "digest": ...}``, or None when there is no manifest."""
    p = Path(path)
    if not p.is_file():
        return None
    return {"manifest": relative_name(p, run_dir), "digest": content_digest(p)}


def changed_parent(lineage: Any, run_dir: Path | str) -> tuple[str, str] | None:
    """The first parent manifest a ``lineage`` names that is not as it was when read: (its name as
    recorded, ``"changed since"`` or ``"is gone"``); None when every parent still matches."""
    parents = lineage.get("parents") if isinstance(lineage, Mapping) else None
    for ref in (parents or {}).values():
        if not isinstance(ref, Mapping) or not ref.get("manifest"):
            continue
        path = Path(str(ref["manifest"]))
        path = path if path.is_absolute() else Path(run_dir) / path
        if not path.is_file():
            return str(ref["manifest"]), "is gone"
        if content_digest(path) != ref.get("digest"):
            return str(ref["manifest"]), "changed since"
    return None


def fingerprint(config: Any = None, inputs: Mapping[str, str] | None = None,
                parents: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The canonical fingerprint dict stored in state files and manifests."""
    return {"config": config if config is not None else {}, "inputs": dict(sorted((inputs or {}).items())),
            "parents": dict(sorted((parents or {}).items()))}


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """The first difference between two fingerprints in words, or None when they match."""
    for part in ("parents", "inputs"):
        before, after = old.get(part) or {}, new.get(part) or {}
        for name in sorted(set(before) | set(after)):
            if name not in after:
                return f"{_noun(part)} {name} is gone"
            if name not in before:
                return f"{_noun(part)} {name} is new"
            if before[name] != after[name]:
                return f"{_noun(part)} {name} changed"
    key = _first_config_change(old.get("config"), new.get("config"), "")
    if key is not None:
        return key
    return None


def _noun(part: str) -> str:
    return "upstream" if part == "parents" else "input"


def _first_config_change(old: Any, new: Any, prefix: str) -> str | None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in sorted(set(old) | set(new), key=str):
            found = _first_config_change(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
            if found is not None:
                return found
        return None
    if old != new:
        return f"config {prefix or 'value'} was {_short(old)}, now {_short(new)}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume(what: str, stored: Mapping[str, Any] | None, current: Mapping[str, Any], restart: bool,
                 where: Path | str) -> bool:
    """True when saved state may be reused; False when ``restart`` asks to discard it.

    ``stored`` is the fingerprint saved with the state (None: no state, nothing to check). A
    mismatch without ``restart`` raises one line: what, what changed, and the two ways on.
    """
    if stored is None:
        return True
    change = describe_change(stored, current)
    if change is None:
        return True
    if restart:
        return False
    raise LineageError(f"{where}: {what} was built from other inputs ({change}); use a new run_dir, "
                       f"or rerun with --restart to discard it")


def read_fingerprint(manifest: Path | str) -> dict[str, Any] | None:
    """The ``lineage`` fingerprint stored in a manifest or state file, None when absent or unreadable."""
    p = Path(manifest)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("lineage") if isinstance(data, dict) else None
