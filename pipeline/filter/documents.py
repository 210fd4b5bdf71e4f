"""The per-document stages (normalise, length, heuristics, edu score) as one object built from config.

``score`` is the expensive, resumable part (stored per shard); ``reasons`` applies thresholds to
stored scores, so changing a threshold re-runs only the cheap part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from filters.base import TEXT, Filter
from filters.edu_score import EduScore
from filters.normalize import LengthBounds, normalize_text
from pipeline.errors import FilterError
from pipeline.filter.inputs import GENERATED
from pipeline.lineage import content_digest
from pipeline.timing import timed

REASON = "filter_reason"


@dataclass
class DocumentFilters:
    """Normalisation + length bounds, the enabled heuristics, and the edu-score filter, in flow order."""

    length: LengthBounds
    heuristics: list[Filter] = field(default_factory=list)
    heuristics_on_generated: bool = False
    quality: EduScore | None = None
    quality_on_generated: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> DocumentFilters:
        """From the root config; FilterError when quality is on and no classifier model exists."""
        fc = cfg.filter
        heuristics: list[Filter] = []
        if fc.heuristics.enabled:
            h = fc.heuristics
            heuristics = [f for f in (h.gopher_quality, h.gopher_repetition, h.c4, h.fineweb) if f.enabled]
        quality = None
        if fc.quality.enabled:
            model = Path(fc.quality.model) if fc.quality.model else Path(cfg.run_dir) / "classifier" / "edu_fasttext.bin"
            if not model.is_file():
                raise FilterError(f"filter.quality: no edu classifier at {model}: run `textbook train-classifier`, "
                                  "set filter.quality.model, or set filter.quality.enabled=false")
            quality = EduScore(model=str(model.resolve()), model_digest=content_digest(model),
                               threshold=fc.quality.threshold if fc.quality.threshold is not None else 0.5)
        return cls(fc.normalize, heuristics, fc.heuristics.apply_to_generated, quality,
                   fc.quality.apply_to_generated)

    def score_key(self) -> dict[str, Any]:
        """What stored scores depend on (not thresholds)."""
        return {"normalize": self.length.form, "length": self.length.max_chars,
                "heuristics": [f.score_key() for f in self.heuristics],
                "quality": self.quality.score_key() if self.quality else None}

    def score(self, frame: pd.DataFrame, clock: dict[str, float] | None = None) -> pd.DataFrame:
        """``frame`` (id, text, source) with normalised text and every score column.

        Heuristics and edu score are computed only for documents within the length bounds'
        maximum (a 10 MB page is rejected by length, not scanned for n-grams), and for every
        other document, so their thresholds stay independent. ``clock``, if given, receives the
        seconds of each step: ``normalize`` and the name of each filter.
        """
        clock = {} if clock is None else clock
        with timed(clock, "normalize"):
            raw = frame[TEXT]
            frame = frame.assign(
                n_bytes=raw.map(lambda t: len(t.encode("utf-8", "surrogatepass"))).astype("int64"),
                text=raw.map(lambda t: normalize_text(t, self.length.form)))
            frame = frame.join(self.length.score(frame))
        scorable = frame[(frame.n_chars > 0) & (frame.n_chars <= self.length.max_chars)]
        for f in [*self.heuristics, *([self.quality] if self.quality else [])]:
            with timed(clock, f.name):
                frame = frame.join(f.score(scorable).reindex(frame.index))
        return frame

    def reasons(self, scored: pd.DataFrame) -> pd.Series:
        """The first stage that rejects each document (``""`` = kept), from stored scores."""
        reason = pd.Series("", index=scored.index, dtype=object)
        generated = scored["source"] == GENERATED
        stages = [(self.length, True)] if self.length.enabled else []
        stages += [(f, self.heuristics_on_generated) for f in self.heuristics]
        if self.quality:
            stages.append((self.quality, self.quality_on_generated))
        for f, on_generated in stages:
            _, why = f.keep(scored)
            applies = (why != "") & (reason == "") & (on_generated | ~generated)
            reason[applies] = why[applies]
        return reason

    def mark(self, scored: pd.DataFrame) -> pd.DataFrame:
        """``scored`` plus the ``filter_reason`` column."""
        return scored.assign(**{REASON: self.reasons(scored).astype(object)})

    def quality_pool(self, scored: pd.DataFrame) -> pd.Series:
        """edu_score of the documents a percentile threshold ranks: past earlier stages, and web unless
        quality applies to generated documents too."""
        assert self.quality is not None
        before = DocumentFilters(self.length, self.heuristics, self.heuristics_on_generated)
        pool = before.reasons(scored) == ""
        if not self.quality_on_generated:
            pool &= scored["source"] != GENERATED
        return scored.loc[pool, "edu_score"].astype("float64")

    def with_threshold(self, threshold: float) -> DocumentFilters:
        assert self.quality is not None
        return DocumentFilters(self.length, self.heuristics, self.heuristics_on_generated,
                               self.quality.model_copy(update={"threshold": threshold}),
                               self.quality_on_generated)

