"""`textbook score`: add an ``edu_score`` column to Parquet/JSONL files with the edu classifier.

The filter stage scores inside its Dask graph with `filters.edu_score.EduScore`; this is
the small stand-alone path: read every input, score in batches, write one Parquet atomically.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from filters.base import ModelError
from filters.edu_score import EduClassifier, load_edu_classifier
from pipeline.config import Config
from pipeline.errors import ClassifierError
from pipeline.filter.config import QualityConfig
from pipeline.io import expand_inputs, iter_batches, write_parquet
from pipeline.progress import progress
from pipeline.rundir import RunDir

BATCH_SIZE = 4096


def model_path(quality: QualityConfig, run: RunDir) -> Path:
    """The classifier to score with: ``filter.quality.model``, else the run's trained model."""
    return Path(quality.model) if quality.model else run.classifier_model


def score_frame(df: pd.DataFrame, model: str | Path, text_column: str = "text") -> pd.DataFrame:
    """``df`` with an added float32 ``edu_score`` column (probability of educational, in [0, 1])."""
    if text_column not in df.columns:
        raise ClassifierError(f"missing text column {text_column!r} (has: {', '.join(map(str, df.columns))})")
    return df.assign(edu_score=_load(model).score(df[text_column].tolist()))


def _load(model: str | Path) -> EduClassifier:
    """The cached classifier; a missing or unreadable model is a `ClassifierError` (one line)."""
    try:
        return load_edu_classifier(model)
    except ModelError as e:
        raise ClassifierError(str(e)) from None


def score_files(cfg: Config, input: list[str], output: str) -> int:
    """Score ``input`` (files or globs) into one Parquet at ``output``: every input column + ``edu_score``."""
    model = model_path(cfg.filter.quality, RunDir(cfg.run_dir))
    _load(model)  # fail on a missing model before reading any data
    column = cfg.classifier.text_column
    files = expand_inputs(input)
    frames = []
    with progress(desc="score", unit="doc") as bar:
        for f in files:
            for batch in iter_batches(f, batch_size=BATCH_SIZE):
                if column not in batch.columns:
                    raise ClassifierError(f"{f.path}: missing text column {column!r} "
                                          f"(has: {', '.join(map(str, batch.columns))}; set classifier.text_column)")
                frames.append(score_frame(batch, model, column))
                bar.update(len(batch))
    scored = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({column: [], "edu_score": []})
    write_parquet(scored, Path(output))
    s = scored["edu_score"]
    print(f"scored {len(scored)} documents from {len(files)} file(s) into {output}"
          + (f": edu_score mean {s.mean():.3f}, median {s.median():.3f}" if len(s) else ""))
    return 0
