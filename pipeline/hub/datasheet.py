"""The datasheet: turn a run's artifacts into the plain numbers a dataset card shows.

Each ``*_section`` function is pure (artifacts in, JSON-able dict out) and returns ``None`` when its
artifact is missing, so the template can say what is missing instead of crashing. They read the
fields the stages write: ``generated/part-*.parquet`` and ``generated/manifest.json``
(``pipeline.generate.runner``), ``classifier/report.json`` (``pipeline.classify.train``) and
``filtered/stats.json`` (``pipeline.filter.runner`` / ``report``). A field that is not there is a
``KeyError``, which the card turns into a note (see ``pipeline.hub.card``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.hub.artifacts import RunArtifacts
from pipeline.hub.provenance import public_path
from pipeline.hub.text_stats import card_metrics, full_report
from pipeline.io import read_json
from pipeline.rundir import TEMPLATE, TEXT, RunDir

# the seed columns the generate stage writes (None where a row's template does not use one)
SEED_FIELDS = ("subject", "topic", "subtopic", "audience", "style")
CLASSIFIER_METRICS = ("precision", "recall", "f1", "accuracy", "roc_auc", "average_precision", "spearman_vs_llm")
DEDUP_STAGES = ("exact_dedup", "minhash")


# --- generation -------------------------------------------------------------------------------

def generation_section(art: RunArtifacts) -> dict[str, Any] | None:
    """Generator, sampling parameters, templates with hashes, tokens, cost, failure and truncation rates."""
    df, manifest = art.generated, art.generated_manifest or {}
    if df is None or df.empty:
        return None
    gen = manifest.get("config", {}).get("generate", {})
    totals = manifest.get("totals")
    flags = Counter(f for row_flags in df["flags"] if row_flags is not None for f in row_flags)
    truncated = df["finish_reason"] == "length"
    return {
        "rows": art.generated_rows,
        "sampled_rows": len(df),
        # a local model folder is shown by name (or Hub id), never as a path on the machine that ran it
        "models": sorted({public_path(str(m), art.run_dir) for m in _distinct(df["model"])}),
        "backend": gen.get("backend"),
        "temperature": _distinct(df["temperature"]),
        "top_p": gen.get("top_p"),
        "max_tokens": _distinct(df["max_tokens"]),
        "templates": _templates(df, manifest.get("templates") or {}),
        "tokens": _tokens(df, art.generated_rows),
        "routes": _routes(df, art.generated_rows),
        "cost": manifest.get("ledger"),
        "finish_reasons": _shares(df["finish_reason"].fillna("unknown")),
        "flags": [{"flag": f, "rows": n, "share": n / len(df)} for f, n in flags.most_common()],
        "truncation_rate": float(truncated.mean()),
        "empty_rate": float((df[TEXT].fillna("").str.strip() == "").mean()),
        # planned requests that left no row: failed for good, or not started once the budget was spent
        "rows_not_written": totals["requests"] - totals["rows"] if totals else None,
        "stop_reason": manifest.get("stop_reason"),
        "latency_s": _describe(df["latency_s"]),
    }


def _distinct(values: pd.Series) -> list[Any]:
    return sorted({v.item() if isinstance(v, np.generic) else v for v in values.dropna().unique()}, key=str)


def _templates(df: pd.DataFrame, info: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows, share, tokens and truncation per template, with its sha(s) and what it asks for (from the manifest)."""
    out = []
    for name, group in df.groupby(TEMPLATE, sort=True):
        out.append({
            "template": name,
            "about": (info.get(name) or {}).get("about") or "",
            "sha": ", ".join(str(s) for s in _distinct(group["template_sha"])) or "-",
            "rows": len(group),
            "share": len(group) / len(df),
            "mean_completion_tokens": float(group["completion_tokens"].mean()),
            "truncation_rate": float((group["finish_reason"] == "length").mean()),
        })
    return out


def _tokens(df: pd.DataFrame, total_rows: int) -> dict[str, Any]:
    scale = total_rows / len(df)  # extrapolate when the card read a sample
    return {
        "prompt": float(df["prompt_tokens"].fillna(0).sum()) * scale,
        "completion": float(df["completion_tokens"].fillna(0).sum()) * scale,
        "mean_completion": float(df["completion_tokens"].mean()),
        "words": float(df[TEXT].fillna("").str.split().str.len().sum()) * scale,
        "extrapolated": scale != 1.0,
    }


def _routes(df: pd.DataFrame, total_rows: int) -> list[dict[str, Any]]:
    """Rows and tokens per rephrase route (none when no row was rephrased)."""
    if "route" not in df.columns or df["route"].isna().all():
        return []
    scale = total_rows / len(df)
    return [{"route": route, "rows": len(group) * scale, "templates": sorted(group[TEMPLATE].unique()),
             "prompt_tokens": float(group["prompt_tokens"].fillna(0).sum()) * scale,
             "completion_tokens": float(group["completion_tokens"].fillna(0).sum()) * scale}
            for route, group in df[df["route"].notna()].groupby("route", sort=True)]


def _shares(values: pd.Series, total: int | None = None) -> list[dict[str, Any]]:
    counts = values.astype(str).value_counts()
    total = total or len(values)
    return [{"value": k, "rows": int(v), "share": int(v) / total} for k, v in counts.items()]


def _describe(values: pd.Series) -> dict[str, float] | None:
    s = values.dropna()
    if s.empty:
        return None
    return {"mean": float(s.mean()), "p50": float(s.quantile(0.5)), "p95": float(s.quantile(0.95))}


# --- seed space and diversity -----------------------------------------------------------------

def seed_section(art: RunArtifacts, top: int = 15) -> dict[str, Any] | None:
    """Counts of each seed value (subjects, topics, subtopics, audiences, styles) over the rows that use it.

    A template that does not use a variable (stories have no audience) leaves it ``None``; shares
    are of the rows whose template uses the variable, so a narrow seed space shows as a large share.
    """
    df = art.generated
    if df is None or df.empty:
        return None
    fields = {}
    for column in SEED_FIELDS:
        used = df[column].dropna().astype(str)
        if used.empty:
            continue
        counts = _shares(used)
        fields[column] = {"distinct": len(counts), "rows": len(used), "top": counts[:top],
                          "max_share": counts[0]["share"]}
    return fields or None


def diversity_section(art: RunArtifacts, seed: int = 0) -> dict[str, Any] | None:
    """The generator's diversity report over all rows, plus the card's extra metrics, overall and per template.

    The overall distinct-n, opening share and near-duplicate rate are the ones ``textbook generate``
    stored in its manifest (computed over every row); they are recomputed only when it has none.
    """
    df = art.generated
    if df is None or df.empty:
        return None
    texts = df[TEXT].fillna("").astype(str)
    stored = (art.generated_manifest or {}).get("diversity")
    overall = {**stored, **card_metrics(list(texts), seed=seed)} if stored else full_report(list(texts), seed=seed)
    per_template = [{"template": name, **full_report(list(group), self_bleu_sample=500, seed=seed)}
                    for name, group in texts.groupby(df[TEMPLATE], sort=True)]
    return {"overall": overall, "per_template": per_template, "stored": bool(stored),
            "gate": (stored or {}).get("gate")}


# --- classifier and filter ---------------------------------------------------------------------

def classifier_section(art: RunArtifacts) -> dict[str, Any] | None:
    """Held-out precision, recall, F1, ROC-AUC, Spearman and the confusion matrix of the edu classifier."""
    report = art.classifier_report
    if not report:
        return None
    val, train = report["validation"], report["train"]
    cm = val["confusion_matrix"]
    return {
        "metrics": [{"metric": m, "validation": val[m], "train": train.get(m)}
                    for m in CLASSIFIER_METRICS if val[m] is not None],
        "threshold": val["threshold"],
        "best_f1": val["best_f1"],
        "confusion_matrix": [[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]],
        "counts": report["counts"],
        "n": val["n"],
        "mode": report["mode"],
        "label_rule": report["label_rule"],
        "trained_on": trained_on(report, art.run_dir),
        "verdict": report["verdict"],
        "warnings": report["warnings"],
    }


def trained_on(report: dict[str, Any], run_dir: Any) -> str:
    """What the classifier learned from, as it happened: the files behind ``classifier.positives`` /
    ``negatives`` (DCLM style), the user's labelled file(s) (``classifier.input``), or the run's annotations."""
    config = (report.get("config") or {}).get("classifier") or {}
    if report["mode"] == "dclm":
        if not config.get("positives"):
            return f"DCLM-style ({report['label_rule']})"
        return (f"DCLM-style: positives from {_files(config['positives'], run_dir)}, "
                f"negatives from {_files(config.get('negatives') or [], run_dir)}")
    rule = report["label_rule"]
    if config.get("input"):
        return f"on labelled documents from {_files(config['input'], run_dir)} ({rule})"
    return f"on LLM annotations (`annotations/`, {rule})"


def _files(paths: list[str], run_dir: Any) -> str:
    return ", ".join(f"`{public_path(str(p), run_dir)}`" for p in paths) or "-"


def filter_section(art: RunArtifacts) -> dict[str, Any] | None:
    """The removal waterfall, the dedup rate and the decontamination table, from ``filtered/stats.json``.

    Whether a stage was switched off is read from the config in ``filtered/manifest.json``.
    """
    stats = art.filter_stats
    if not stats:
        return None
    config = (art.filter_manifest or {}).get("config", {}).get("filter", {})
    waterfall = [{**row, "enabled": _enabled(config, row["stage"])} for row in stats["stages"]]
    return {
        "waterfall": waterfall,
        "dedup": _dedup_rate(waterfall),
        "decontamination": [{"benchmark": name, **entry} for name, entry in stats["decontamination"].items()],
        "decontamination_enabled": _enabled(config, "decontaminate"),
        "docs_in": stats["documents_in"],
        "docs_out": stats["documents_out"],
        "kept_by_source": _public_counts(stats["kept_by_source"], art.run_dir),
        "quality": stats.get("quality"),  # only when the quality stage ran
        "bad_files": [_bad_file(b, art.run_dir) for b in stats.get("bad_files") or []],
        "timings_s": stats.get("timings_s") or {},
    }


def _public_counts(counts: dict[str, int], run_dir: Any) -> dict[str, int]:
    """Counts keyed by input path, re-keyed by the name a public card shows (files of one name add up):
    a file the demo wrote into ``web_sample/`` by what it holds (installed docs, a Hub sample)."""
    run = RunDir(Path(run_dir))
    described = read_json(run.web_sources) if run.web_sources.exists() else {}
    out: dict[str, int] = {}
    for source, n in counts.items():
        path = Path(str(source))
        name = described.get(path.name) if path.parent == run.web_sample else None
        name = name or public_path(str(source), run_dir)
        out[name] = out.get(name, 0) + n
    return out


def _bad_file(entry: Any, run_dir: Any) -> str:
    """A skipped input as ``name: error``, its path made public wherever it occurs."""
    if not isinstance(entry, dict):
        return public_path(str(entry), run_dir)
    path = str(entry.get("path", ""))
    name = public_path(path, run_dir)
    error = str(entry.get("error", "")).replace(path, name) if path else str(entry.get("error", ""))
    return error if error.startswith(name) else f"{name}: {error}"


def _enabled(config: dict[str, Any], stage: str) -> bool | None:
    """``filter.<stage>.enabled`` (decontamination also needs benchmarks); None when the config is unknown."""
    section = config.get(stage)
    if not isinstance(section, dict):
        return None
    if stage == "decontaminate" and not section.get("benchmarks"):
        return False
    return section.get("enabled", True)


def _dedup_rate(waterfall: list[dict[str, Any]]) -> dict[str, Any] | None:
    dedup = [s for s in waterfall if s["stage"] in DEDUP_STAGES and s["enabled"] is not False]
    if not dedup or not dedup[0]["docs_in"]:
        return None
    removed = sum(s["docs_removed"] for s in dedup)
    return {"stages": [s["stage"] for s in dedup], "docs_in": dedup[0]["docs_in"], "removed": removed,
            "rate": removed / dedup[0]["docs_in"]}
