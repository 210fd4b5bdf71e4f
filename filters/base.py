"""The Filter contract: ``score(batch) -> score columns``; ``keep(scores) -> (mask, reason)``.

Scoring is the expensive part and is stored as columns; keeping is a cheap comparison against
thresholds, so thresholds can change without recomputing scores (as NeMo Curator splits
``score_document`` / ``keep_document``). A filter is a pydantic model: its fields are its
parameters, so the same class is a config section and a notebook object::

    scores = GopherQuality(min_doc_words=20).score(df)
    mask, reason = GopherQuality(min_doc_words=20).keep(scores)

A filter also declares the ``stage`` that counts its removals and the ``reasons`` it can give
(``"<name>:<rule>"``), so the filter stage's report needs no hand-kept map of them.

``filters`` imports neither ``pipeline`` nor dask: one batch of documents in, columns and keep
decisions out. ``pipeline`` builds on it, never the reverse.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # imported where used: `pipeline.rundir` needs TEXT, not pandas's import
    import pandas as pd

TEXT = "text"


class ModelError(Exception):
    """A model a filter needs is missing or unreadable; the message names the file."""


class Section(BaseModel):
    """Strict parameters: an unknown key is an error, not a no-op. The base of every filter and of
    every config section of the pipeline (`pipeline.settings` re-exports it)."""

    # The docstring under a field documents it: `textbook config --reference` reads them from the
    # source (pipeline.config.field_docs), not pydantic's use_attribute_docstrings, which parses the
    # source of every section class at import, on every command's start.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Filter(Section, ABC):
    """A document filter: parameters as fields, ``score`` then ``keep``."""

    name: ClassVar[str]
    """Prefix of its score columns and of its reasons."""
    stage: ClassVar[str]
    """The filter-stage step whose removals it counts (``heuristics`` for all four heuristics)."""
    reasons: ClassVar[tuple[str, ...]] = ()
    """Every reason ``keep`` can give, ``"<name>:<rule>"``; ``*`` stands for a variable part."""
    score_fields: ClassVar[tuple[str, ...]] = ()
    """Parameters that change the scores (the others are thresholds applied by ``keep``)."""

    enabled: bool = True

    @abstractmethod
    def score(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Score columns for ``batch[TEXT]``, indexed like ``batch``."""

    @abstractmethod
    def keep(self, scores: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        """A boolean keep mask and a reason per row (``""`` where kept), from score columns."""

    def score_key(self) -> dict[str, Any]:
        """What the scores depend on: a changed key means stored scores are stale."""
        return {"filter": self.name, **{f: getattr(self, f) for f in self.score_fields}}

    def apply(self, batch: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Score and split ``batch`` into (kept, rejected); rejected has a ``filter_reason`` column."""
        scored = batch.join(self.score(batch))
        mask, reason = self.keep(scored)
        return scored[mask], scored[~mask].assign(filter_reason=reason[~mask])


class RowFilter(Filter):
    """A filter whose scores are a pure function of one document's text."""

    @abstractmethod
    def score_text(self, text: str) -> dict[str, float]:
        """The score columns of one document."""

    def score(self, batch: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        rows = [self.score_text(t) for t in batch[TEXT]]
        return pd.DataFrame(rows, index=batch.index, columns=list(self.columns()), dtype="float64")

    def columns(self) -> Sequence[str]:
        return list(self.score_text("A short probe sentence."))


Rule = tuple[str, Callable[["pd.DataFrame"], "pd.Series"]]


def first_failure(scores: pd.DataFrame, rules: Sequence[Rule]) -> tuple[pd.Series, pd.Series]:
    """Apply ``(reason, fails(scores))`` rules in order: a row's reason is the first rule it fails.

    Rows whose scores are missing (NaN: not scored because an earlier rule rejected them) fail
    no rule here, so the earlier stage's reason stands.
    """
    import numpy as np
    import pandas as pd

    # numpy, not pandas, between the rules: a pandas operation has a fixed cost whatever its length,
    # and this runs for every stage of every partition in every pass that judges it
    reason = np.full(len(scores), "", dtype=object)
    kept = np.ones(len(scores), dtype=bool)
    for label, fails in rules:
        hit = np.asarray(fails(scores).fillna(False), dtype=bool) & kept
        reason[hit] = label
        kept &= ~hit
    return pd.Series(kept, index=scores.index), pd.Series(reason, index=scores.index)
