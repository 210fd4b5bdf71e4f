"""The datasheet: turn a run's artifacts into the plain numbers a dataset card shows.

Each ``*_section`` function is pure (artifacts in, JSON-able dict out) and returns ``None`` when its
artifact is missing, so the template can say what is missing instead of crashing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from pipeline.hub.artifacts import RunArtifacts
from pipeline.hub.diversity import diversity_report

SEED_FIELDS = ("topic", "subtopic", "audience", "style")


def pick(mapping: dict[str, Any] | None, *keys: str, default: Any = None) -> Any:
    """The first of ``keys`` present in ``mapping`` (stages name the same number differently)."""
    if not isinstance(mapping, dict):
        return default
    for key in keys:
        if mapping.get(key) is not None:
            return mapping[key]
    return default


def section_config(manifest: dict[str, Any] | None, section: str) -> dict[str, Any]:
    """One section of a manifest's config, whether the manifest holds the full config or only its section."""
    config = pick(manifest, "config", default={}) or {}
    return config.get(section, config) if isinstance(config.get(section), dict) else config


# --- generation -------------------------------------------------------------------------------

def generation_section(art: RunArtifacts) -> dict[str, Any] | None:
    """Generator, sampling parameters, templates with hashes, tokens, cost, failure and truncation rates."""
    df, manifest = art.generated, art.generated_manifest
    if df is None or df.empty:
        return None
    gen = section_config(manifest, "generate")
    flags = _flag_counts(df)
    rows = len(df)
    return {
        "rows": art.generated_rows,
        "sampled_rows": rows,
        "models": _distinct(df, "model") or [gen.get("model")],
        "backend": gen.get("backend"),
        "temperature": _distinct(df, "temperature") or [gen.get("temperature")],
        "top_p": gen.get("top_p"),
        "max_tokens": _distinct(df, "max_tokens") or [gen.get("max_tokens")],
        "templates": _templates(df),
        "tokens": _tokens(df, art.generated_rows),
        "cost": _cost(manifest, gen),
        "finish_reasons": _shares(df["finish_reason"].fillna("unknown")) if "finish_reason" in df else [],
        "flags": [{"flag": f, "rows": n, "share": n / rows} for f, n in flags.most_common()],
        "truncation_rate": _share(df, lambda d: d["finish_reason"] == "length", "finish_reason"),
        "empty_rate": _share(df, lambda d: d["text"].fillna("").str.strip() == "", "text"),
        "rows_not_written": _not_written(pick(manifest, "totals")),
        "stop_reason": pick(manifest, "stop_reason"),
        "latency_s": _describe(df, "latency_s"),
    }


def _not_written(totals: dict[str, Any] | None) -> int | None:
    """Planned requests that left no row (failed for good, or cut by the budget)."""
    failed = pick(totals, "failed", "failed_rows")
    if failed is not None:
        return failed
    planned, rows = pick(totals, "requests"), pick(totals, "rows")
    return planned - rows if isinstance(planned, int) and isinstance(rows, int) else None


def _distinct(df: pd.DataFrame, column: str) -> list[Any]:
    if column not in df:
        return []
    return sorted({_plain(v) for v in df[column].dropna().unique()}, key=str)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _templates(df: pd.DataFrame) -> list[dict[str, Any]]:
    if "template" not in df:
        return []
    out = []
    for name, group in df.groupby("template", sort=True):
        out.append({
            "template": name,
            "sha": ", ".join(str(s) for s in _distinct(group, "template_sha")) or "-",
            "rows": len(group),
            "share": len(group) / len(df),
            "mean_completion_tokens": _mean(group, "completion_tokens"),
            "truncation_rate": _share(group, lambda d: d["finish_reason"] == "length", "finish_reason"),
        })
    return out


def _tokens(df: pd.DataFrame, total_rows: int) -> dict[str, Any]:
    scale = total_rows / len(df) if len(df) else 0.0  # extrapolate when the card read a sample
    prompt = float(df["prompt_tokens"].fillna(0).sum()) * scale if "prompt_tokens" in df else None
    completion = float(df["completion_tokens"].fillna(0).sum()) * scale if "completion_tokens" in df else None
    return {
        "prompt": prompt,
        "completion": completion,
        "mean_completion": _mean(df, "completion_tokens"),
        "words": float(df["text"].fillna("").str.split().str.len().sum()) * scale,
        "extrapolated": scale != 1.0,
    }


def _cost(manifest: dict[str, Any] | None, gen: dict[str, Any]) -> dict[str, Any] | None:
    ledger = pick(manifest, "ledger", "cost_ledger", "cost")
    if not isinstance(ledger, dict):
        return None
    return {
        "usd": pick(ledger, "cost_usd", "usd", "total_usd"),
        "requests": pick(ledger, "requests"),
        "prompt_tokens": pick(ledger, "prompt_tokens"),
        "completion_tokens": pick(ledger, "completion_tokens"),
        "price_input_per_million": pick(ledger, "price_input_per_million",
                                        default=gen.get("price_input_per_million")),
        "price_output_per_million": pick(ledger, "price_output_per_million",
                                         default=gen.get("price_output_per_million")),
        "max_cost_usd": pick(ledger, "max_cost_usd", default=gen.get("max_cost_usd")),
    }


def _flag_counts(df: pd.DataFrame) -> Counter[str]:
    counts: Counter[str] = Counter()
    if "flags" not in df:
        return counts
    for value in df["flags"]:
        counts.update(_as_list(value))
    return counts


def _as_list(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [f for f in value.replace(";", ",").split(",") if f.strip()]
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return [str(value)]


def _shares(values: pd.Series) -> list[dict[str, Any]]:
    counts = values.astype(str).value_counts()
    return [{"value": k, "rows": int(v), "share": int(v) / len(values)} for k, v in counts.items()]


def _share(df: pd.DataFrame, predicate: Any, column: str) -> float | None:
    if column not in df or df.empty:
        return None
    return float(predicate(df).mean())


def _mean(df: pd.DataFrame, column: str) -> float | None:
    return float(df[column].mean()) if column in df and df[column].notna().any() else None


def _describe(df: pd.DataFrame, column: str) -> dict[str, float] | None:
    if column not in df or not df[column].notna().any():
        return None
    s = df[column].dropna()
    return {"mean": float(s.mean()), "p50": float(s.quantile(0.5)), "p95": float(s.quantile(0.95))}


# --- seed space and diversity -----------------------------------------------------------------

def seed_section(art: RunArtifacts, top: int = 15) -> dict[str, Any] | None:
    """Counts of each seed value (topics, subtopics, audiences, styles): how well the seed space is covered."""
    df = art.generated
    if df is None or df.empty:
        return None
    fields = {}
    for column in SEED_FIELDS:
        if column not in df or not df[column].notna().any():
            continue
        counts = df[column].dropna().astype(str).value_counts()
        fields[column] = {
            "distinct": int(counts.size),
            "top": [{"value": k, "rows": int(v), "share": int(v) / len(df)} for k, v in counts.head(top).items()],
            "max_share": float(counts.iloc[0]) / len(df),
        }
    return fields or None


def diversity_section(art: RunArtifacts, seed: int = 0) -> dict[str, Any] | None:
    """Diversity of the generated text, overall and per template, plus the generator's own report."""
    df = art.generated
    if df is None or df.empty or "text" not in df:
        return None
    texts = df["text"].fillna("").astype(str)
    per_template = []
    if "template" in df:
        for name, group in texts.groupby(df["template"], sort=True):
            report = diversity_report(list(group), self_bleu_sample=500, seed=seed)
            per_template.append({"template": name, **report})
    reported = pick(art.generated_manifest, "diversity")
    return {
        "overall": diversity_report(list(texts), seed=seed),
        "per_template": per_template,
        "generator_report": reported if isinstance(reported, dict) else None,
    }


# --- classifier and filter ---------------------------------------------------------------------

def classifier_section(art: RunArtifacts) -> dict[str, Any] | None:
    """Held-out precision, recall, F1, ROC-AUC, Spearman and the confusion matrix of the edu classifier."""
    report = art.classifier_report
    if not report:
        return None
    metrics = pick(report, "validation", "metrics", default=report)
    names = (("precision", ()), ("recall", ()), ("f1", ("f1_score",)), ("accuracy", ()),
             ("roc_auc", ("auc",)), ("average_precision", ()), ("spearman", ("spearman_vs_llm",)))
    train = pick(report, "train")
    return {
        "metrics": [{"metric": name, "validation": pick(metrics, name, *aliases),
                     "train": pick(train, name, *aliases) if isinstance(train, dict) else None}
                    for name, aliases in names if pick(metrics, name, *aliases) is not None],
        "threshold": pick(metrics, "threshold", default=pick(report, "threshold")),
        "best_f1": pick(metrics, "best_f1"),
        "confusion_matrix": _matrix(pick(metrics, "confusion_matrix", default=pick(report, "confusion_matrix"))),
        "counts": pick(report, "counts", default={}),
        "n": pick(metrics, "n"),
        "mode": pick(report, "mode"),
        "label_rule": pick(report, "label_rule"),
        "verdict": pick(report, "verdict"),
        "warnings": pick(report, "warnings", default=[]),
    }


def _matrix(value: Any) -> list[list[Any]] | None:
    """A 2x2 confusion matrix as rows [actual negative, actual positive] x [predicted negative, positive]."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(r, list) and len(r) == 2 for r in value):
        return value
    if isinstance(value, dict):
        cells = [pick(value, k) for k in ("tn", "fp", "fn", "tp")]
        if all(c is not None for c in cells):
            return [cells[:2], cells[2:]]
    return None


def filter_section(art: RunArtifacts) -> dict[str, Any] | None:
    """The removal waterfall, the dedup rate and the decontamination table, from ``filtered/stats.json``."""
    stats = art.filter_stats
    if not stats:
        return None
    waterfall = []
    for name, entry in _stage_entries(pick(stats, "stages", "waterfall", default={})):
        docs_in = pick(entry, "docs_in", "documents_in", "in")
        docs_out = pick(entry, "docs_out", "documents_out", "out")
        waterfall.append({
            "stage": name,
            "enabled": pick(entry, "enabled", default=True),
            "docs_in": docs_in,
            "docs_out": docs_out,
            "removed": (docs_in - docs_out) if docs_in is not None and docs_out is not None else None,
            "bytes_in": pick(entry, "bytes_in"),
            "bytes_out": pick(entry, "bytes_out"),
        })
    return {
        "waterfall": waterfall,
        "dedup": _dedup_rate(waterfall),
        "decontamination": _decontamination(pick(stats, "decontamination", "decontaminate", default={})),
        "docs_in": pick(stats, "documents_in", default=waterfall[0]["docs_in"] if waterfall else None),
        "docs_out": pick(stats, "documents_out", default=waterfall[-1]["docs_out"] if waterfall else None),
        "kept_by_source": pick(stats, "kept_by_source", default={}),
        "timings_s": pick(stats, "timings_s", default={}),
    }


def _stage_entries(stages: Any) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(stages, dict):
        return [(str(k), v) for k, v in stages.items() if isinstance(v, dict)]
    if isinstance(stages, list):
        return [(str(pick(s, "name", "stage", default=f"stage {i}")), s)
                for i, s in enumerate(stages) if isinstance(s, dict)]
    return []


def _dedup_rate(waterfall: list[dict[str, Any]]) -> dict[str, Any] | None:
    dedup = [s for s in waterfall if ("dup" in s["stage"] or s["stage"] == "minhash") and s["removed"] is not None]
    if not dedup or not dedup[0]["docs_in"]:
        return None
    removed = sum(s["removed"] for s in dedup)
    return {"stages": [s["stage"] for s in dedup], "docs_in": dedup[0]["docs_in"], "removed": removed,
            "rate": removed / dedup[0]["docs_in"]}


def _decontamination(report: Any) -> list[dict[str, Any]]:
    entries = report.get("benchmarks", report) if isinstance(report, dict) else report
    rows = []
    for name, entry in _stage_entries(entries):
        rows.append({
            "benchmark": name,
            "documents_hit": pick(entry, "documents_hit", "docs_hit", "documents", "hits"),
            "items_hit": pick(entry, "items_hit", "unique_items_hit", "benchmark_items_hit"),
            "benchmark_items": pick(entry, "items", "benchmark_items", "size"),
        })
    return rows
