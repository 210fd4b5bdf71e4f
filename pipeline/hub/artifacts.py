"""What a run directory holds, read once and tolerantly: the raw material of the cards.

Every stage is optional here. A missing or unreadable artifact becomes ``None`` plus a line in
``notes`` that says which file is missing and which command makes it, so a card can say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from pipeline.hub.downstream import checkpoint_results
from pipeline.io import list_shards, read_json
from pipeline.rundir import (
    ID,
    MANIFEST,
    MODEL_CONFIG,
    PHASES,
    SHARD_GLOB,
    TEMPLATE,
    TEXT,
    TRAIN_SUMMARY,
    RunDir,
    manifest_path,
)

# The generated columns the card reads (all written by `textbook generate`); others are left on disk.
GENERATED_COLUMNS = (ID, TEXT, TEMPLATE, "template_sha", "subject", "topic", "subtopic", "audience", "style",
                     "model", "temperature", "max_tokens", "finish_reason", "prompt_tokens",
                     "completion_tokens", "latency_s", "flags")
OPTIONAL_COLUMNS = ("route",)
"""Read when a shard has them: ``route`` is written only by rephrasing runs."""


@dataclass
class RunArtifacts:
    """The manifests, reports and (a sample of) the generated rows of one run directory."""

    run_dir: Path
    generated: pd.DataFrame | None = None
    generated_rows: int = 0
    generated_manifest: dict[str, Any] | None = None
    annotations_manifest: dict[str, Any] | None = None
    classifier_report: dict[str, Any] | None = None
    filter_stats: dict[str, Any] | None = None
    filter_manifest: dict[str, Any] | None = None
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    """phase -> {"path", "config" (config.json), "summary" (train_summary.json), "manifest"}."""
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    """phase -> the `textbook eval` result of the checkpoint now in checkpoints/<phase> (by its digest)."""
    notes: list[str] = field(default_factory=list)

    @property
    def layout(self) -> RunDir:
        return RunDir(self.run_dir)

    def relative(self, path: Path) -> str:
        """``path`` as the card's notes name it: relative to the run directory."""
        return path.relative_to(self.run_dir).as_posix()

    @property
    def classifier_figure(self) -> Path | None:
        figure = self.layout.classifier_figure
        if (self.classifier_report or {}).get("verdict") not in (None, "accepted"):
            figure = self.layout.classifier_rejected / figure.name  # a rejected model keeps its report there
        return figure if figure.exists() else None

    @property
    def manifests(self) -> dict[str, dict[str, Any]]:
        """stage -> manifest, for every manifest found, in pipeline order."""
        found = {"generate": self.generated_manifest, "annotate": self.annotations_manifest,
                 "train-classifier": self.classifier_report,
                 "filter": self.filter_manifest}
        found.update({f"train {p}": c.get("manifest") for p, c in self.checkpoints.items()})
        return {k: v for k, v in found.items() if v}


def load_artifacts(run_dir: Path, max_rows: int = 20_000, seed: int = 0) -> RunArtifacts:
    """Read what exists under ``run_dir``; generated rows above ``max_rows`` are a seeded sample."""
    art = RunArtifacts(run_dir=Path(run_dir))
    run = art.layout
    art.generated_manifest = _json(art, manifest_path(run.generated), "textbook generate")
    art.generated, art.generated_rows = _generated(art, max_rows, seed)
    art.annotations_manifest = _json(art, manifest_path(run.annotations), "textbook annotate", required=False)
    art.classifier_report = _json(art, run.classifier_report, "textbook train-classifier", required=False)
    if art.classifier_report is None:  # a model that failed its quality gate keeps its report here
        art.classifier_report = _json(art, run.classifier_rejected / run.classifier_report.name, "",
                                      required=False)
    if art.classifier_report is None:
        art.notes.append(f"{art.relative(run.classifier_report)}: missing (run `textbook train-classifier`)")
    art.filter_stats = _json(art, run.filter_stats, "textbook filter")
    art.filter_manifest = _json(art, manifest_path(run.filtered), "textbook filter", required=False)
    for phase in PHASES:
        folder = run.checkpoint(phase)
        if not (folder / MODEL_CONFIG).exists():
            continue
        art.checkpoints[phase] = {
            "path": folder,
            "config": _json(art, folder / MODEL_CONFIG, "textbook train"),
            "summary": _json(art, folder / TRAIN_SUMMARY, "textbook train"),
            "manifest": _json(art, folder / MANIFEST, "textbook train", required=False),
        }
    if not art.checkpoints:
        art.notes.append(f"{art.relative(run.checkpoints)}/: no trained checkpoint (run `textbook train --phase 1`)")
    art.evals = checkpoint_results(art.run_dir, art.notes)
    return art


def _json(art: RunArtifacts, path: Path, command: str, required: bool = True) -> dict[str, Any] | None:
    rel = art.relative(path)
    if not path.exists():
        if required:
            art.notes.append(f"{rel}: missing (run `{command}`)")
        return None
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        art.notes.append(f"{rel}: unreadable ({type(e).__name__}); its section is left out")
        return None
    if not isinstance(data, dict):
        art.notes.append(f"{rel}: expected a JSON object; its section is left out")
        return None
    return data


def _generated(art: RunArtifacts, max_rows: int, seed: int) -> tuple[pd.DataFrame | None, int]:
    generated = art.layout.generated
    shards = list_shards(generated)
    if not shards:
        art.notes.append(f"{art.relative(generated)}/{SHARD_GLOB}: no shards (run `textbook generate`)")
        return None, 0
    frames, total = [], 0
    for shard in shards:
        try:
            names = pq.read_schema(shard).names
            missing = [c for c in GENERATED_COLUMNS if c not in names]
            columns = [*GENERATED_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in names)]
            frame = None if missing else pq.read_table(shard, columns=columns).to_pandas()
        except (OSError, ValueError) as e:
            art.notes.append(f"{art.relative(shard)}: unreadable ({str(e).splitlines()[0][:80]}); skipped")
            continue
        if frame is None:
            art.notes.append(f"{art.relative(shard)}: lacks column(s) {', '.join(missing)}; skipped")
            continue
        total += len(frame)
        frames.append(frame)
    if not frames:
        return None, 0
    df = pd.concat(frames, ignore_index=True)
    if len(df) > max_rows:
        art.notes.append(f"{art.relative(generated)}: statistics use a seeded sample of {max_rows:,} of "
                         f"{len(df):,} rows")
        df = df.sample(n=max_rows, random_state=seed).reset_index(drop=True)
    return df, total
