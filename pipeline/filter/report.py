"""What the filter stage removed and why: per-stage counts for stats.json (report.png: ``plot``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from filters.decontaminate import Decontaminate
from pipeline.filter.dedup import DEDUP_REASONS
from pipeline.filter.documents import REPHRASE_REASONS, document_filter_types

# The corpus-wide steps after the per-document filters, in the runner's order, with their reasons.
_CORPUS_STEPS: list[tuple[str, tuple[str, ...]]] = [
    (Decontaminate.stage, Decontaminate.reasons), *((stage, (reason,)) for reason, stage in DEDUP_REASONS.items())]
# the second pass over rephrased rows judges them with the edu score: the quality step
_STEPS = [(f.stage, f.reasons) for f in document_filter_types()] + [("quality", REPHRASE_REASONS)] + _CORPUS_STEPS

FILTER_STAGES: tuple[str, ...] = tuple(dict.fromkeys(stage for stage, _ in _STEPS))
"""The filter stage's steps in data-flow order: the stats.json and report.png rows."""
_STAGE_OF_PREFIX = {reason.split(":", 1)[0]: stage for stage, reasons in _STEPS for reason in reasons}


def stage_of(reason: str) -> str:
    """The step that gives ``reason``, from the reasons each filter declares (``other`` for none)."""
    return _STAGE_OF_PREFIX.get(reason.split(":", 1)[0], "other")


def stage_table(docs_in: int, bytes_in: int, removed: dict[str, list[int]]) -> list[dict[str, Any]]:
    """Documents and bytes in, removed and out per stage, from ``{reason: [docs, bytes]}``."""
    per_stage: dict[str, list[int]] = {s: [0, 0] for s in FILTER_STAGES}
    for reason, (docs, size) in removed.items():
        counts = per_stage.setdefault(stage_of(reason), [0, 0])
        counts[0] += docs
        counts[1] += size
    rows, docs, size = [], docs_in, bytes_in
    for stage, (gone_docs, gone_bytes) in per_stage.items():
        rows.append({"stage": stage, "docs_in": docs, "bytes_in": size, "docs_removed": gone_docs,
                     "bytes_removed": gone_bytes, "docs_out": docs - gone_docs, "bytes_out": size - gone_bytes})
        docs, size = docs - gone_docs, size - gone_bytes
    return rows


def decontamination_report(found: list[str], removed: list[str], items: dict[str, int],
                           indexed: dict[str, int]) -> dict[str, Any]:
    """Per benchmark: items, items long enough to index, and in the input the documents hit and the
    unique items hit, then the documents the decontamination stage removed (a hit document that an
    earlier stage removed counts as hit, not as removed here).

    ``found`` and ``removed`` hold one ``decontam_matches`` string per document (``"gsm8k:3,mmlu:9"``).
    """
    docs: Counter[str] = Counter()
    gone: Counter[str] = Counter()
    unique: dict[str, set[str]] = {name: set() for name in items}
    for doc in found:
        hit = [m.rsplit(":", 1) for m in doc.split(",") if m]
        for name in {b for b, _ in hit}:
            docs[name] += 1
        for b, item in hit:
            unique.setdefault(b, set()).add(item)
    for doc in removed:
        for name in {m.rsplit(":", 1)[0] for m in doc.split(",") if m}:
            gone[name] += 1
    return {name: {"items": items.get(name, 0), "items_indexed": indexed.get(name, 0),
                   "documents_hit": docs[name], "unique_items_hit": len(unique[name]),
                   "documents_removed": gone[name]}
            for name in unique}
