"""What a published run was made from, checked against disk, in paths a reader can use.

- :func:`verify_outputs`: every manifest that lists its ``outputs`` still matches the files on disk
  (content digests), and no unlisted ``part-*.parquet`` shard sits beside them; a card or a push
  built on shards that changed after their manifest would describe data it does not contain.
- :func:`card_lineage` / :func:`check_card_fresh`: the card records the digests of the manifests it
  was built from, and ``push`` refuses a card whose manifests changed since.
- :func:`lineage_chain`: each manifest with the parent manifests it names (short digests), for the
  cards' lineage tables, so a checkpoint can be traced to the shards it saw.
- :func:`public_path` / :func:`public_data`: paths as the card shows them: relative to the run, a Hub
  id for a Hub cache snapshot, a file name for any other local path; never a machine-local absolute path.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import Any

from pipeline.io import read_json
from pipeline.lineage import (
    LineageError,
    changed_parent,
    content_digest,
    fingerprint,
    manifest_ref,
    relative_name,
)
from pipeline.rundir import MANIFEST, PHASES, SHARD_GLOB, TRAIN_SUMMARY, RunDir, list_shards, manifest_path

SHORT = 8  # digest characters a card shows: enough to tell manifests apart by eye
_RUN = RunDir(Path())  # the run directory's layout, relative to its root
# folders of the run directory that are built from the manifests, not manifests of their own
_BUILT = {_RUN.card.name, _RUN.push.name, _RUN.push_model.name}
# the run directory in pipeline order: a manifest's rank is the first prefix it starts with
_ORDER = tuple(f"{folder.as_posix()}/" for folder in (
    _RUN.generated, _RUN.annotations, _RUN.classifier, _RUN.filtered, _RUN.tokenizer,
    *(_RUN.checkpoint(p) for p in PHASES), _RUN.eval, _RUN.compare))
# reports the card reads besides the manifests (a stage rewrites them with its manifest)
_REPORTS = (_RUN.classifier_report, _RUN.classifier_rejected / _RUN.classifier_report.name, _RUN.filter_stats,
            *(_RUN.checkpoint(p) / TRAIN_SUMMARY for p in PHASES))
_STAGE_COMMANDS = {"generate": "textbook generate", "annotate": "textbook annotate",
                   "train-classifier": "textbook train-classifier", "filter": "textbook filter"}


def stage_manifests(run_dir: Path) -> list[Path]:
    """The run's stage manifests (``*/manifest.json``, ``*/*/manifest.json``, else the classifier's
    ``report.json``), in pipeline order; the card and push folders are not stages."""
    run_dir, run = Path(run_dir), RunDir(run_dir)
    found = [*run_dir.glob(f"*/{MANIFEST}"), *run_dir.glob(f"*/*/{MANIFEST}")]
    if not manifest_path(run.classifier).is_file() and run.classifier_report.is_file():
        found.append(run.classifier_report)  # the classifier's manifest before it had its own
    found = [p for p in found
             if p.relative_to(run_dir).parts[0] not in _BUILT
             and not any(part.startswith(".") for part in p.relative_to(run_dir).parts)]
    return sorted(set(found), key=lambda p: _rank(p.relative_to(run_dir).as_posix()))


def _rank(rel: str) -> tuple[int, str]:
    return next((i for i, prefix in enumerate(_ORDER) if rel.startswith(prefix)), len(_ORDER)), rel


def _read(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}  # the card names unreadable manifests itself (pipeline.hub.artifacts)
    return data if isinstance(data, dict) else {}


def rerun_command(manifest: dict[str, Any], path: Path) -> str:
    """The command that rewrites ``manifest`` (``textbook train --phase 2`` for a phase 2 checkpoint)."""
    stage = str(manifest.get("stage") or path.parent.name)
    if stage == "train":
        phase = str(manifest.get("phase") or path.parent.name).removeprefix("phase")
        return f"textbook train --phase {phase}"
    if stage == "tokenizer":
        return "textbook train --phase 1"
    return _STAGE_COMMANDS.get(stage, f"textbook {stage}")


# --- shards against their manifests ------------------------------------------------------------

def verify_outputs(run_dir: Path) -> int:
    """Check every ``outputs`` {name: digest} a manifest lists against disk; return the files checked.

    A changed or missing file, or a ``part-*.parquet`` shard that its folder's manifest does not
    list, is a one-line :class:`LineageError` naming the file and the stage to rerun. Manifests
    without ``outputs`` (older runs) are not checked.
    """
    run_dir = Path(run_dir)
    checked = 0
    for path in stage_manifests(run_dir):
        manifest = _read(path)
        outputs = manifest.get("outputs")
        if not isinstance(outputs, dict):
            continue
        where, rerun = path.relative_to(run_dir).as_posix(), rerun_command(manifest, path)
        listed: set[Path] = set()
        for name, digest in outputs.items():
            file = _locate(str(name), run_dir, path.parent)
            if not file.is_file():
                raise LineageError(f"{name}: listed in {where} but missing; rerun {rerun}")
            if content_digest(file) != digest:
                raise LineageError(f"{name}: changed since {where} was written (its content digest differs); "
                                   f"rerun {rerun}")
            listed.add(file.resolve())
            checked += 1
        for folder in {f.parent for f in listed if PurePath(f.name).match(SHARD_GLOB)}:
            for shard in list_shards(folder):
                if shard.resolve() not in listed:
                    raise LineageError(f"{relative_name(shard, run_dir)}: not listed in {where} "
                                       f"(left by another run?); rerun {rerun}")
    return checked


def verify_parents(run_dir: Path) -> None:
    """Every stage manifest was built from its parent manifests as they are now: a checkpoint trained
    before the filter reran (or a filter run before the classifier was retrained) would publish data
    beside a model that never saw it. A mismatch is a one-line :class:`LineageError` naming both and
    the stage to rerun."""
    run_dir = Path(run_dir)
    for path in stage_manifests(run_dir):
        manifest = _read(path)
        changed = changed_parent(manifest.get("lineage"), run_dir)
        if changed is not None:
            parent, how = changed
            raise LineageError(f"{relative_name(path.parent, run_dir)} was built from {public_path(parent, run_dir)}, "
                               f"which {how}: it does not match the data this run holds now; rerun "
                               f"{rerun_command(manifest, path)} (--restart to discard the old one), then textbook card")


def _locate(name: str, run_dir: Path, folder: Path) -> Path:
    """An ``outputs`` name: relative to the run directory (the convention), else to the manifest's folder."""
    path = Path(name)
    if path.is_absolute() or (run_dir / path).exists():
        return path if path.is_absolute() else run_dir / path
    return folder / path


# --- the card's own record ---------------------------------------------------------------------

def card_parents(run_dir: Path) -> dict[str, dict[str, str]]:
    """{name: {"manifest", "digest"}} of every manifest and report a card reads, as they are now."""
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    results = [*run.eval_results(), run.compare_table]  # the scores the cards print
    files = [*stage_manifests(run_dir), *[run_dir / r for r in _REPORTS], *results]
    refs = {relative_name(p, run_dir): manifest_ref(p, run_dir) for p in files}
    return {name: ref for name, ref in sorted(refs.items()) if ref}


def card_lineage(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint stored in ``card/manifest.json``: the hub config and the manifests read."""
    return fingerprint(config=config, parents=card_parents(run_dir))


def check_card_fresh(run_dir: Path) -> None:
    """Refuse when ``card/`` was built from manifests that changed since (a push would publish another card).

    A run without ``card/``, or a card written before cards recorded their manifests, passes: the
    push folder's card is rebuilt from the run as it is now.
    """
    run_dir = Path(run_dir)
    stored = (_read(manifest_path(RunDir(run_dir).card)).get("lineage") or {}).get("parents")
    if not isinstance(stored, dict):
        return
    current = card_parents(run_dir)
    changed = [f"{name} {'is new' if name not in stored else 'is gone' if name not in current else 'changed'}"
               for name in sorted(set(stored) | set(current)) if stored.get(name) != current.get(name)]
    if changed:
        more = f" and {len(changed) - 2} more" if len(changed) > 2 else ""
        raise LineageError(f"card/ was built from other manifests ({', '.join(changed[:2])}{more}): "
                           "rerun textbook card")


# --- the lineage chain the cards print ----------------------------------------------------------

def lineage_chain(run_dir: Path, start: Path | None = None) -> list[dict[str, Any]]:
    """One row per manifest: its short digest and the parents it names, each marked when it changed since.

    With ``start`` (a manifest path), only that manifest and the ancestors its parents lead to.
    """
    run_dir = Path(run_dir)
    manifests = stage_manifests(run_dir)
    if start is not None:
        manifests = _ancestors(run_dir, Path(start))
    rows = []
    for path in manifests:
        manifest = _read(path)
        lineage = manifest.get("lineage")
        outputs = manifest.get("outputs")
        row: dict[str, Any] = {"artifact": relative_name(path, run_dir), "digest": content_digest(path)[:SHORT],
                               "stage": manifest.get("stage"), "recorded": isinstance(lineage, dict),
                               "parents": [], "inputs": [],
                               "outputs": len(outputs) if isinstance(outputs, dict) else None}
        if isinstance(lineage, dict):
            for name, ref in sorted((lineage.get("parents") or {}).items()):
                row["parents"].append(_parent(run_dir, str(name), ref))
            row["inputs"] = [{"name": public_path(str(n), run_dir), "digest": str(d)[:SHORT]}
                             for n, d in sorted((lineage.get("inputs") or {}).items())]
        rows.append(row)
    return rows


def _parent(run_dir: Path, name: str, ref: Any) -> dict[str, Any]:
    if not isinstance(ref, dict) or not ref.get("manifest"):
        return {"name": name, "manifest": None, "digest": None, "current": None}
    path = _locate(str(ref["manifest"]), run_dir, run_dir)
    now = content_digest(path) if path.is_file() else None
    return {"name": name, "manifest": public_path(str(ref["manifest"]), run_dir),
            "digest": str(ref.get("digest"))[:SHORT], "current": now == ref.get("digest")}


def _ancestors(run_dir: Path, start: Path) -> list[Path]:
    seen: list[Path] = []
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.append(path)
        for ref in ((_read(path).get("lineage") or {}).get("parents") or {}).values():
            if isinstance(ref, dict) and ref.get("manifest"):
                todo.append(_locate(str(ref["manifest"]), run_dir, run_dir))
    return sorted(seen, key=lambda p: _rank(relative_name(p, run_dir)))


# --- public paths --------------------------------------------------------------------------------

_HUB_CACHE = re.compile(r"(?:^|/)(models|datasets)--([^/]+?)--([^/]+)")
_ABSOLUTE = re.compile(r"^(/|~/|[A-Za-z]:[\\/])")


def public_path(value: str, run_dir: Path | str, prefix: str = "") -> str:
    """``value`` as a public card shows it: inside the run, relative to it (after ``prefix``); a Hub
    cache snapshot, its Hub id; any other absolute local path, its file name (with its folder for a
    glob). URLs, ``hf://`` paths, Hub ids and relative paths outside the run are shown as given."""
    if "://" in value:
        return value
    inside = _inside(value, run_dir)
    if inside == ".":
        return prefix or "."
    if inside is not None:
        return f"{prefix.rstrip('/')}/{inside}" if prefix else inside
    if not _ABSOLUTE.match(value):
        return value
    cached = _HUB_CACHE.search(value)
    if cached:
        return f"{cached.group(2)}/{cached.group(3)}"
    path = PurePath(value)
    return f"{path.parent.name}/{path.name}" if any(c in path.name for c in "*?[") else path.name


def _inside(value: str, run_dir: Path | str) -> str | None:
    try:
        return Path(value).expanduser().resolve().relative_to(Path(run_dir).resolve()).as_posix()
    except (ValueError, OSError):
        return None


def public_data(data: Any, run_dir: Path | str, prefix: str = "") -> Any:
    """``data`` (JSON-like) with every absolute path string made public by :func:`public_path`."""
    if isinstance(data, dict):  # keys too: counts are keyed by input path (``kept_by_source``)
        return {public_data(k, run_dir, prefix): public_data(v, run_dir, prefix) for k, v in data.items()}
    if isinstance(data, list):
        return [public_data(v, run_dir, prefix) for v in data]
    if isinstance(data, str) and _ABSOLUTE.match(data) and "\n" not in data:
        return public_path(data, run_dir, prefix)
    return data


def public_run_dir(run_dir: Path | str) -> str:
    """The ``run_dir`` a reproduce config names: as given when relative, ``runs/<name>`` when absolute."""
    text = str(run_dir)
    return f"runs/{PurePath(text).name}" if _ABSOLUTE.match(text) else text
