"""The exact commands that reproduce a run, rebuilt from its manifests (public config only, no secrets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.hub.layout import REPRODUCE_DIR
from pipeline.hub.provenance import public_data, public_run_dir
from pipeline.io import stable_hash, write_text

# manifest stage name -> the command that makes it, in pipeline order
STAGE_COMMANDS = {
    "generate": "textbook generate",
    "annotate": "textbook annotate",
    "train-classifier": "textbook train-classifier",
    "filter": "textbook filter",
    "train phase1": "textbook train --phase 1",
    "train phase2": "textbook train --phase 2",
    "train sft": "textbook train --phase sft",
}


def reproduce_section(manifests: dict[str, dict[str, Any]], run_dir: Path | str) -> dict[str, Any] | None:
    """Git sha, package versions, the config file(s) and one command per stage that ran.

    Stages that ran with the same config share one file; a stage run with different overrides gets
    its own, so the commands replay exactly what each stage saw. Local paths are made public
    (:func:`public_config`): the files are published with the card.
    """
    ran = [(stage, {**m, "config": public_config(m.get("config"), run_dir)})
           for stage, m in ((s, manifests.get(s)) for s in STAGE_COMMANDS) if m]
    if not ran:
        return None
    by_hash: dict[str, dict[str, Any]] = {}
    for _, manifest in ran:
        config = manifest.get("config")
        if isinstance(config, dict) and config:
            by_hash.setdefault(stable_hash(config), config)
    files: dict[str, str] = {}  # config hash -> file name
    for i, key in enumerate(by_hash):
        files[key] = f"{REPRODUCE_DIR}/config.yaml" if len(by_hash) == 1 else f"{REPRODUCE_DIR}/config-{i + 1}.yaml"
    commands = []
    for stage, manifest in ran:
        config = manifest.get("config")
        name = files.get(stable_hash(config)) if isinstance(config, dict) and config else None
        commands.append({"stage": stage, "command": STAGE_COMMANDS[stage] + (f" -c {name}" if name else ""),
                         "created": manifest.get("created")})
    last = ran[-1][1]
    return {
        "git_sha": next((m.get("git_sha") for _, m in ran if m.get("git_sha")), None),
        "versions": last.get("versions") or {},
        "commands": commands,
        "configs": {files[k]: v for k, v in by_hash.items()},
    }


def public_config(config: Any, run_dir: Path | str) -> Any:
    """A stage's config with ``run_dir`` as ``runs/<name>`` when it was absolute, paths inside the run
    under it, and other absolute local paths as file names (a reader supplies their own files)."""
    if not isinstance(config, dict) or not config:
        return config
    public_run = public_run_dir(config.get("run_dir") or run_dir)
    return {**public_data(config, run_dir, prefix=public_run), "run_dir": public_run}


def write_reproduce_configs(section: dict[str, Any] | None, folder: Path) -> list[Path]:
    """Write the section's config files under ``folder`` (e.g. ``folder/reproduce/config.yaml``)."""
    if not section:
        return []
    written = []
    for name, config in section["configs"].items():
        path = write_text("# Public config of the run (secrets removed: set OPENAI_API_KEY / HF_TOKEN; "
                          "local paths shown by file name: point them at your files).\n"
                          + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), Path(folder) / name)
        written.append(path)
    return written
