"""`textbook train-classifier`: fastText on labelled text, judged on a held-out split.

load labelled documents (LLM annotations, labelled Parquet, or DCLM positives vs negatives)
→ normalise, drop empties and exact duplicates (so no document sits in both splits), count skips
→ stratified train/validation split → train → score validation through the production scorer
→ report.json + report.png → install ``edu_fasttext.bin`` only if validation beats chance.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from filters.quality import (
    MAX_CHARS,
    EduClassifier,
    TrainParams,
    evaluate_scores,
    normalize_for_fasttext,
    train_fasttext,
)
from pipeline.config import Config, public_dict
from pipeline.errors import ClassifierError, DataError
from pipeline.io import build_manifest, expand_inputs, iter_batches, list_shards, write_json

MODEL_NAME = "edu_fasttext.bin"
MIN_RELIABLE_PER_CLASS = 50


def classifier_dir(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "classifier"


def train_classifier(cfg: Config, restart: bool = False) -> int:
    """Train, evaluate and install the edu classifier; `ClassifierError` if it is no better than chance."""
    cc = cfg.classifier
    started = time.perf_counter()
    docs, mode = load_labelled(cfg)
    docs, skipped = prepare_examples(docs)
    docs = cap_documents(docs, cc.max_documents, cfg.seed)
    train_df, val_df = stratified_split(docs, cc.validation_fraction, cfg.seed, describe_labels(cfg, mode))

    t0 = time.perf_counter()
    model, lr_used = train_fasttext(train_df["line"].tolist(), train_df["label"].tolist(), TrainParams(
        epoch=cc.epoch, lr=cc.lr, dim=cc.dim, word_ngrams=cc.word_ngrams, min_count=cc.min_count,
        bucket=cc.bucket, threads=cc.threads, seed=cfg.seed))
    train_s = time.perf_counter() - t0

    # Validation goes through the exact scoring path the filter uses, raw text in.
    scorer = EduClassifier(model=model, path="<memory>", labels=list(model.labels))
    val_scores = scorer.score(val_df["text"].tolist())
    llm = val_df["llm_score"].to_numpy(dtype=float) if mode == "labelled" else None
    metrics = evaluate_scores(val_df["label"].to_numpy(), val_scores, 0.5, llm)
    train_metrics = evaluate_scores(train_df["label"].to_numpy(), scorer.score(train_df["text"].tolist()), 0.5,
                                    train_df["llm_score"].to_numpy(dtype=float) if mode == "labelled" else None)

    verdict, warnings = judge(metrics, val_scores, cc.min_auc)
    report = build_manifest(
        "train-classifier", public_dict(cfg),
        mode=mode,
        label_rule=describe_labels(cfg, mode),
        verdict=verdict,
        warnings=warnings,
        counts={
            "used": len(docs), "train": len(train_df), "validation": len(val_df),
            "train_positives": int(train_df["label"].sum()), "validation_positives": int(val_df["label"].sum()),
            "skipped": skipped,
        },
        validation=metrics,
        train=train_metrics,  # next to validation: a large gap is overfitting
        validation_score_quantiles={str(q): round(float(np.quantile(val_scores, q)), 6) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
        learning_rate=lr_used,  # below classifier.lr when fastText diverged and was retried
        training_time_s=round(train_s, 3),
        total_time_s=round(time.perf_counter() - started, 3),
        model_size_bytes=None,
    )

    out = classifier_dir(cfg) if verdict == "accepted" else classifier_dir(cfg) / "rejected"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MODEL_NAME}.{os.getpid()}.tmp"
    model.save_model(str(tmp))
    report["model_size_bytes"] = tmp.stat().st_size
    from pipeline.classify.report import plot_classifier_report

    plot_classifier_report(val_df["label"].to_numpy(), val_scores, metrics, out / "report.png",
                           heading=f"edu classifier ({mode}: {describe_labels(cfg, mode)}): {verdict}")
    write_json(report, out / "report.json")
    os.replace(tmp, out / MODEL_NAME)

    m = metrics
    summary = (f"validation n={m['n']}: ROC-AUC {m['roc_auc']}, F1 {m['f1']} (P {m['precision']}, "
               f"R {m['recall']}), Spearman vs LLM {m['spearman_vs_llm']}; trained in {train_s:.1f}s")
    if verdict != "accepted":
        raise ClassifierError(f"classifier {verdict}; {summary}; not installed (any earlier model is unchanged), "
                              f"see {out}/report.json and report.png; classifier.min_auc={cc.min_auc} sets the bar")
    shutil.rmtree(out / "rejected", ignore_errors=True)  # an earlier refusal no longer describes this run
    print(f"classifier: {out / MODEL_NAME}\n{summary}")
    for w in warnings:
        print(f"warning: {w}")
    return 0


# --- loading ---------------------------------------------------------------------------------

def load_labelled(cfg: Config) -> tuple[pd.DataFrame, str]:
    """Columns ``text``, ``label`` (0/1), ``llm_score`` (the raw label, NaN in DCLM mode), ``source``."""
    cc = cfg.classifier
    if cc.positives or cc.negatives:
        if not (cc.positives and cc.negatives):
            raise ClassifierError("classifier.positives and classifier.negatives must both be set (DCLM style)")
        pos = read_column_frames(cc.positives, [cc.text_column], "classifier.positives")
        neg = read_column_frames(cc.negatives, [cc.text_column], "classifier.negatives")
        docs = pd.concat([pos.assign(label=1), neg.assign(label=0)], ignore_index=True)
        docs = docs.rename(columns={cc.text_column: "text"})
        docs["llm_score"] = np.nan
        return docs[["text", "label", "llm_score", "source"]], "dclm"

    paths = list(cc.input)
    key = "classifier.input"
    if not paths:
        annotations = Path(cfg.run_dir) / "annotations"
        if not list_shards(annotations):
            raise ClassifierError(f"no labelled data: {annotations} has no part-*.parquet "
                                  "(run `textbook annotate`, or set classifier.input or positives/negatives)")
        paths, key = [str(p) for p in list_shards(annotations)], "annotations"
    frame = read_column_frames(paths, [cc.text_column, cc.label_column], key)
    raw = frame[cc.label_column]
    values = parse_labels(raw, cc.label_column, frame["source"])
    docs = pd.DataFrame({"text": frame[cc.text_column], "llm_score": values, "source": frame["source"]})
    docs["label"] = (values >= cc.threshold).astype(int)
    docs.attrs["unlabelled"] = int(np.isnan(values).sum())
    return docs[~np.isnan(values)].reset_index(drop=True), "labelled"


def read_column_frames(paths: list[str], columns: list[str], key: str) -> pd.DataFrame:
    """Read ``columns`` from every file (with a ``source`` column); one-line errors naming the file."""
    frames = []
    try:
        files = expand_inputs(paths)
        for f in tqdm(files, desc=f"read {key}", unit="file", disable=len(files) < 2):
            for batch in iter_batches(f, columns=columns):
                frames.append(batch.assign(source=f.path))
    except DataError as e:
        raise ClassifierError(f"{key}: {e}") from None
    if not frames:
        raise ClassifierError(f"{key}: no documents in {', '.join(paths)}")
    return pd.concat(frames, ignore_index=True)


def parse_labels(raw: pd.Series, column: str, sources: pd.Series) -> np.ndarray:
    """Labels as floats (missing → NaN); `ClassifierError` naming the first non-numeric value."""
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(values) & raw.notna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise ClassifierError(f"{sources.iloc[i]}: label column {column!r} has a non-numeric value "
                              f"{raw.iloc[i]!r} (row {i}); labels must be numbers (set classifier.label_column)")
    return values


def describe_labels(cfg: Config, mode: str) -> str:
    if mode == "dclm":
        return "positive: classifier.positives; negative: classifier.negatives"
    return f"positive when {cfg.classifier.label_column} >= {cfg.classifier.threshold}"


# --- preparation -----------------------------------------------------------------------------

def prepare_examples(docs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Add the normalised ``line``; drop non-text, empty and duplicate documents, counting each skip.

    Invalid UTF-8 is replaced (counted as ``invalid_utf8``), long documents are truncated to
    ``MAX_CHARS`` (counted as ``truncated``); neither is dropped. Duplicates keep the first copy,
    so a document can never be both trained on and validated against.
    """
    skipped = {"unlabelled": int(docs.attrs.get("unlabelled", 0)), "not_text": 0, "empty": 0, "duplicate": 0,
               "invalid_utf8": 0, "truncated": 0}
    lines = []
    for text in tqdm(docs["text"], desc="normalise", unit="doc", disable=len(docs) < 20_000):
        if isinstance(text, bytes | bytearray):
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                skipped["invalid_utf8"] += 1
        elif not isinstance(text, str):
            skipped["not_text"] += 1
            lines.append("")
            continue
        if len(text) > MAX_CHARS:
            skipped["truncated"] += 1
        lines.append(normalize_for_fasttext(text))
    docs = docs.assign(line=lines)
    has_text = docs["line"] != ""
    skipped["empty"] = int((~has_text).sum()) - skipped["not_text"]
    docs = docs[has_text]
    dup = docs["line"].duplicated()
    skipped["duplicate"] = int(dup.sum())
    return docs[~dup].reset_index(drop=True), skipped


def cap_documents(docs: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """At most ``limit`` documents, sampled per class in proportion (seeded)."""
    if limit is None or len(docs) <= limit:
        return docs
    return docs.groupby("label", group_keys=False).sample(frac=limit / len(docs), random_state=seed) \
        .reset_index(drop=True)


def stratified_split(docs: pd.DataFrame, fraction: float, seed: int, rule: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded train/validation split keeping each class's share; errors if a class is too small."""
    counts = docs["label"].value_counts().to_dict()
    pos, neg = int(counts.get(1, 0)), int(counts.get(0, 0))
    if pos == 0 or neg == 0:
        which = "negative" if pos == 0 else "positive"
        raise ClassifierError(f"all {len(docs)} usable documents are {which} ({rule}): training needs both "
                              "classes; change classifier.threshold or add documents of the other class")
    if min(pos, neg) < 2:
        raise ClassifierError(f"too few documents to train and validate: {pos} positive, {neg} negative "
                              "(need at least 2 of each)")
    rng = np.random.default_rng(seed)
    val_index = []
    for label in (0, 1):
        index = rng.permutation(np.flatnonzero(docs["label"].to_numpy() == label))
        n_val = min(len(index) - 1, max(1, round(len(index) * fraction)))
        val_index.extend(index[:n_val].tolist())
    is_val = np.zeros(len(docs), dtype=bool)
    is_val[val_index] = True
    train, val = docs[~is_val], docs[is_val]
    return train.reset_index(drop=True), val.reset_index(drop=True)


# --- verdict ---------------------------------------------------------------------------------

def judge(metrics: dict[str, Any], scores: np.ndarray, min_auc: float) -> tuple[str, list[str]]:
    """``accepted`` or the reason to refuse the model, plus warnings a reader of the report needs."""
    warnings = []
    small = min(metrics["positives"], metrics["negatives"])
    if small < MIN_RELIABLE_PER_CLASS:
        warnings.append(f"only {small} validation documents in the smaller class: metrics are noisy")
    if metrics["f1"] == 0:
        warnings.append("no validation document scores >= 0.5: pick a threshold with filter.quality.keep_top "
                        "or validation.best_f1.threshold")
    if not np.isfinite(scores).all() or np.ptp(scores) == 0:
        return "rejected: validation scores are constant or NaN (degenerate training data)", warnings
    auc = metrics["roc_auc"]
    if auc is None or auc < min_auc:
        return (f"rejected: validation ROC-AUC {auc} < classifier.min_auc {min_auc} "
                "(0.5 is chance)"), warnings
    return "accepted", warnings
