"""The per-document stages (normalise, length, heuristics, edu score) as one object built from config.

``score`` is the expensive, resumable part (stored per shard); ``reasons`` applies thresholds to
stored scores, so changing a threshold re-runs only the cheap part; a ``keep_top`` fraction becomes
a threshold over the whole corpus with `percentile_threshold`.

A filter whose class is a section of the ``filter`` config of its own (``filter.<key>``, like
``normalize``) runs after the length bounds and before the heuristics, on every document: adding
one takes its module in ``filters/`` and that config section, nothing here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from filters.base import TEXT, Filter, ModelError
from filters.edu_score import EduScore
from filters.heuristics import HeuristicFilter, score_heuristics
from filters.normalize import LengthBounds, normalize_texts, utf8_sizes
from pipeline.errors import ClassifierError, FilterError
from pipeline.filter.config import FilterConfig
from pipeline.lineage import content_digest
from pipeline.rundir import EDU_SCORE, GENERATED_SOURCE, ID, REASON, SOURCE, RunDir
from pipeline.timing import timed


def section_filters(fc: FilterConfig) -> list[Filter]:
    """The enabled filters that are a ``filter`` config section of their own, in config order."""
    return [f for key, f in fc if isinstance(f, Filter) and key != "normalize" and f.enabled]


def document_filter_types() -> list[type[Filter]]:
    """Every per-document filter the ``filter`` section can run, in the order `DocumentFilters` applies
    them (length, the filters with a section of their own, the heuristics, the edu score)."""
    fields = FilterConfig.model_fields
    types = [fields["normalize"].annotation]
    types += [f.annotation for key, f in fields.items()
              if key != "normalize" and isinstance(f.annotation, type) and issubclass(f.annotation, Filter)]
    types += [f.annotation for f in fields["heuristics"].annotation.model_fields.values()
              if isinstance(f.annotation, type) and issubclass(f.annotation, Filter)]
    return [*types, EduScore]


@dataclass
class DocumentFilters:
    """Normalisation + length bounds, the filters with a config section of their own, the enabled
    heuristics, and the edu-score filter, in flow order."""

    length: LengthBounds
    heuristics: list[Filter] = field(default_factory=list)
    heuristics_on_generated: bool = False
    quality: EduScore | None = None
    quality_on_generated: bool = False
    sections: list[Filter] = field(default_factory=list)
    """Filters that are a ``filter.<key>`` section of their own; they apply to generated documents too."""
    route_of: dict[str, str] = field(default_factory=dict)
    """Rephrased generated rows under a per-route keep: row id -> route."""
    route_cut: dict[str, float] = field(default_factory=dict)
    """Route -> the edu_score its rows need (``filter.quality.keep_top_per_route`` as thresholds)."""
    unfaithful: frozenset[str] = frozenset()
    """Ids of generated rows flagged ``unfaithful`` at generation, rejected as ``rephrase:unfaithful``."""

    @classmethod
    def of(cls, fc: FilterConfig, run: RunDir) -> DocumentFilters:
        """The filters the ``filter`` section turns on (the run's classifier and generated rows where it
        uses them); FilterError when quality is on and no classifier model exists."""
        heuristics: list[Filter] = []
        if fc.heuristics.enabled:
            heuristics = [f for _, f in fc.heuristics if isinstance(f, Filter) and f.enabled]
        quality = None
        if fc.quality.enabled:
            model = Path(fc.quality.model) if fc.quality.model else run.classifier_model
            if not model.is_file():
                raise FilterError(f"filter.quality: no edu classifier at {model}: run `textbook train-classifier`, "
                                  "set filter.quality.model, or set filter.quality.enabled=false")
            quality = EduScore(model=str(model.resolve()), model_digest=content_digest(model),
                               threshold=fc.quality.threshold if fc.quality.threshold is not None else 0.5)
        filters = cls(fc.normalize, heuristics, fc.heuristics.apply_to_generated, quality,
                      fc.quality.apply_to_generated, section_filters(fc))
        return filters.with_rephrase_pass(fc, run)

    def with_rephrase_pass(self, fc: FilterConfig, run: RunDir) -> DocumentFilters:
        """The second pass over rephrased generated rows (those with a ``route``): ``keep_top_per_route``
        becomes a threshold per route, the percentile of the edu scores of that route's rows (scored
        here with the same normalisation and model as the stage scores them), and rows flagged
        ``unfaithful`` are rejected when ``filter.quality.reject_unfaithful``."""
        keep = fc.quality.keep_top_per_route
        if keep and self.quality is None:
            raise FilterError("filter.quality.keep_top_per_route ranks rewrites by edu_score: it needs "
                              "filter.quality.enabled=true and a classifier")
        generated = _rephrased_rows(run.generated) if fc.include_generated else None
        if generated is None:
            return self
        unfaithful = frozenset(generated.loc[generated["unfaithful"], ID]) if fc.quality.reject_unfaithful \
            else frozenset()
        route_of: dict[str, str] = {}
        route_cut: dict[str, float] = {}
        if keep:
            ranked = generated[generated["route"].isin(list(keep))]
            route_of = dict(zip(ranked[ID], ranked["route"], strict=True))
            base = DocumentFilters(self.length, quality=self.quality)
            scores = base.score(ranked[[ID, TEXT]].assign(**{SOURCE: GENERATED_SOURCE}))[EDU_SCORE]
            for route, fraction in keep.items():
                route_cut[route] = percentile_threshold(scores[(ranked["route"] == route).to_numpy()].to_numpy(),
                                                        fraction)
                print(f"filter: keep_top_per_route {route}={fraction} of {int((ranked['route'] == route).sum()):,} "
                      f"rewrites -> edu_score >= {route_cut[route]:.6g}")
        return replace(self, route_of=route_of, route_cut=route_cut, unfaithful=unfaithful)

    def filters(self) -> list[Filter]:
        """The scoring filters after the length bounds, in flow order."""
        return [*self.sections, *self.heuristics, *([self.quality] if self.quality else [])]

    def score_key(self) -> dict[str, Any]:
        """What stored scores depend on (not thresholds)."""
        return {"normalize": self.length.form, "length": self.length.max_chars,
                "heuristics": [f.score_key() for f in self.heuristics],
                "quality": self.quality.score_key() if self.quality else None,
                **({"sections": [f.score_key() for f in self.sections]} if self.sections else {})}

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
            frame = frame.assign(n_bytes=utf8_sizes(raw),
                                 text=normalize_texts(raw, self.length.form).set_axis(frame.index))
            frame = frame.join(self.length.score(frame))
        scorable = frame[(frame.n_chars > 0) & (frame.n_chars <= self.length.max_chars)]
        # the heuristics share one segmentation of the text (its seconds: the "segments" step)
        shared = [f for f in self.filters() if isinstance(f, HeuristicFilter)]
        measured = dict(zip([f.name for f in shared], score_heuristics(shared, scorable[TEXT], clock), strict=True))
        for f in self.filters():
            if f.name in measured:
                frame = frame.join(measured[f.name].reindex(frame.index))
                continue
            with timed(clock, f.name):
                try:
                    frame = frame.join(f.score(scorable).reindex(frame.index))
                except ModelError as e:  # one line for the CLI, as every stage error
                    raise (ClassifierError if f is self.quality else FilterError)(str(e)) from None
        return frame

    def reasons(self, scored: pd.DataFrame) -> pd.Series:
        """The first stage that rejects each document (``""`` = kept), from stored scores."""
        # numpy between the stages (see filters.base.first_failure): this runs per partition and pass
        reason = np.full(len(scored), "", dtype=object)
        generated = (scored[SOURCE] == GENERATED_SOURCE).to_numpy(dtype=bool)
        stages = [(self.length, True)] if self.length.enabled else []
        # a section filter judges generated documents unless it says otherwise (apply_to_generated)
        stages += [(f, getattr(f, "apply_to_generated", True)) for f in self.sections]
        stages += [(f, self.heuristics_on_generated) for f in self.heuristics]
        if self.quality:
            stages.append((self.quality, self.quality_on_generated))
        for f, on_generated in stages:
            _, why = f.keep(scored)
            why = why.to_numpy(dtype=object)
            applies = (why != "") & (reason == "")
            if not on_generated:
                applies &= ~generated
            reason[applies] = why[applies]
        if self.unfaithful:
            applies = generated & (reason == "") & scored[ID].isin(self.unfaithful).to_numpy()
            reason[applies] = UNFAITHFUL
        if self.route_cut:
            cut = scored[ID].map(self.route_of).map(self.route_cut).astype("float64")
            # a rewrite under its route's threshold (or unscored) is one of the worst rewrites
            applies = generated & (reason == "") & (cut.notna() & ~(scored[EDU_SCORE] >= cut)).to_numpy()
            reason[applies] = ROUTE_KEEP
        return pd.Series(reason, index=scored.index)

    def mark(self, scored: pd.DataFrame) -> pd.DataFrame:
        """``scored`` plus the ``filter_reason`` column."""
        return scored.assign(**{REASON: self.reasons(scored)})

    def quality_pool(self, scored: pd.DataFrame) -> pd.Series:
        """edu_score of the documents a percentile threshold ranks: past earlier stages, and web unless
        quality applies to generated documents too."""
        assert self.quality is not None
        before = DocumentFilters(self.length, self.heuristics, self.heuristics_on_generated, sections=self.sections)
        pool = before.reasons(scored) == ""
        if not self.quality_on_generated:
            pool &= scored[SOURCE] != GENERATED_SOURCE
        return scored.loc[pool, EDU_SCORE].astype("float64")

    def with_threshold(self, threshold: float) -> DocumentFilters:
        assert self.quality is not None
        return replace(self, quality=self.quality.model_copy(update={"threshold": threshold}))


UNFAITHFUL = "rephrase:unfaithful"
"""Reason of a rewrite that kept too few of its source's content words (``generate.rephrase.min_faithfulness``)."""
ROUTE_KEEP = "rephrase:below_route_keep"
"""Reason of a rewrite outside its route's ``filter.quality.keep_top_per_route`` fraction."""
REPHRASE_REASONS = (UNFAITHFUL, ROUTE_KEEP)


def _rephrased_rows(folder: Path) -> pd.DataFrame | None:
    """``id``, ``text``, ``route`` and ``unfaithful`` of the generated rows that have a route (None when
    the run's generated shards have no ``route`` column)."""
    import pyarrow.parquet as pq

    from pipeline.io import read_parquet
    from pipeline.rundir import list_shards

    frames = []
    for part in list_shards(folder):
        names = set(pq.read_schema(part).names)
        if "route" not in names:
            continue
        frame = read_parquet(part, [c for c in (ID, TEXT, "route", "flags") if c in names])
        frame = frame[frame["route"].notna()]
        flags = frame["flags"] if "flags" in frame.columns else pd.Series([[]] * len(frame), index=frame.index)
        frames.append(pd.DataFrame({ID: frame[ID].astype(str), TEXT: frame[TEXT].astype(str),
                                    "route": frame["route"].astype(str),
                                    "unfaithful": [f is not None and "unfaithful" in list(f) for f in flags]}))
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)


def percentile_threshold(scores: Iterable[float], keep_top: float) -> float:
    """The score at which the top ``keep_top`` fraction of documents is kept (keep ``score >= t``).

    Contract: ``0 < keep_top <= 1`` (else `ClassifierError`); NaN scores are ignored; exactly
    ``ceil(keep_top * n)`` documents score >= t unless ties at t keep a few more; ``keep_top=1``
    returns the minimum score (keep all); an empty set returns +inf (keep nothing).
    """
    if not 0 < keep_top <= 1:
        raise ClassifierError(f"keep_top must be in (0, 1], got {keep_top}")
    s = np.asarray(scores if isinstance(scores, np.ndarray) else list(scores), dtype=np.float64).ravel()
    s = s[~np.isnan(s)]
    if s.size == 0:
        return float("inf")
    k = min(s.size, max(1, math.ceil(keep_top * s.size - 1e-9)))
    # The k-th largest value, found in O(n) without sorting the whole corpus.
    return float(np.partition(s, s.size - k)[s.size - k])
