"""`textbook train-classifier`: fastText on labelled text, judged on a held-out split.

load labelled documents (LLM annotations, labelled Parquet, or DCLM positives vs negatives)
→ normalise, drop empties and exact duplicates (so no document sits in both splits), count skips
→ stratified train/validation split → train → score validation through the production scorer
→ report.json + report.png → install ``edu_fasttext.bin`` only if validation beats chance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from filters.edu_score import MAX_CHARS, NEGATIVE_LABEL, POSITIVE_LABEL, EduClassifier, normalize_for_fasttext
from pipeline.classify.config import ClassifierConfig
from pipeline.classify.report import evaluate_scores, plot_classifier_report, roc_auc_interval
from pipeline.config import Config, public_dict
from pipeline.errors import ClassifierError, DataError
from pipeline.io import (
    build_manifest,
    check_writable,
    expand_inputs,
    iter_batches,
    list_shards,
    read_json,
    write_json,
)
from pipeline.lineage import (
    LineageError,
    content_digest,
    describe_change,
    file_digests,
    fingerprint,
    manifest_ref,
    relative_name,
)
from pipeline.progress import progress
from pipeline.rundir import (
    CLASSIFIER_FIGURE,
    CLASSIFIER_MODEL,
    CLASSIFIER_REPORT,
    MANIFEST,
    RunDir,
    manifest_path,
)

MIN_RELIABLE_PER_CLASS = 50
SCORE_SPREAD_QUANTILES = (0.05, 0.95)
"""The validation scores' spread runs from the lower quantile of one class to the upper of either,
each class on its own: one outlier does not make a spread, and a small class (24 generated textbooks
against 1,000 web pages) is not lost among the large one's quantiles."""


# --- fastText training ------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainParams:
    """fastText supervised hyper-parameters (names as in fastText's Python API)."""

    epoch: int = 10
    lr: float = 0.2
    dim: int = 64
    word_ngrams: int = 2
    min_count: int = 2
    bucket: int = 200_000
    threads: int | None = None
    seed: int = 0


def train_fasttext(texts: Sequence[str], labels: Sequence[int], params: TrainParams = TrainParams(),
                   attempts: int = 4) -> tuple[Any, float]:
    """Train a supervised fastText model on normalised one-line ``texts`` and 0/1 ``labels``.

    Contract: texts are already normalised (see `normalize_for_fasttext`) and non-empty; both
    classes are present (else `ClassifierError`). Returns the in-memory `fasttext` model (labels
    `POSITIVE_LABEL`, `NEGATIVE_LABEL`) and the learning rate it was trained with: fastText can
    diverge ("Encountered NaN", seen with small hash tables), so training is retried with the
    rate halved, up to ``attempts`` times, before `ClassifierError`.

    Each attempt runs in a fresh Python process: fastText's training reads memory left over by
    earlier models in the same process, so a second training there is neither reproducible nor
    safe from spurious NaN. A fresh process makes ``threads=1`` runs bit-for-bit repeatable.
    """
    import fasttext

    if len(texts) != len(labels):
        raise ClassifierError(f"{len(texts)} texts but {len(labels)} labels")
    if len(set(int(y) for y in labels)) < 2:
        raise ClassifierError("training needs both positive and negative examples")
    work = Path(tempfile.mkdtemp(prefix="edu_fasttext."))
    data, model_path = work / "train.txt", work / "model.bin"
    try:
        with open(data, "w", encoding="utf-8") as f:
            for text, y in zip(texts, labels, strict=True):
                f.write(f"{POSITIVE_LABEL if y else NEGATIVE_LABEL} {text}\n")
        options = {"input": str(data), "epoch": params.epoch, "dim": params.dim, "wordNgrams": params.word_ngrams,
                   "minCount": params.min_count, "bucket": params.bucket,
                   "thread": params.threads or os.cpu_count() or 1, "seed": params.seed, "loss": "softmax",
                   "verbose": 2 if sys.stderr.isatty() else 0}  # fastText's own progress line: rate, ETA
        lr = params.lr
        for attempt in range(attempts):
            child = subprocess.run([sys.executable, "-c", _TRAIN_IN_CHILD, json.dumps({**options, "lr": lr}),
                                    str(model_path)], stdout=subprocess.PIPE, text=True)
            if child.returncode == 0:
                return fasttext.load_model(str(model_path)), lr
            said = child.stdout.strip().splitlines()
            error = said[-1] if said else f"training process exited with code {child.returncode}"
            if "NaN" not in error or attempt == attempts - 1:
                raise ClassifierError(f"fastText training failed at lr={lr}: {error} "
                                      "(lower classifier.lr or raise classifier.bucket)")
            lr /= 2
        raise AssertionError("unreachable")
    finally:
        for path in (data, model_path):
            path.unlink(missing_ok=True)
        work.rmdir()


# The child of `train_fasttext`: train, save, and print fastText's error (e.g. "Encountered NaN") on failure.
_TRAIN_IN_CHILD = """
import json, sys
import fasttext
try:
    fasttext.train_supervised(**json.loads(sys.argv[1])).save_model(sys.argv[2])
except RuntimeError as e:
    print(e)
    sys.exit(3)
"""



# --- the stage -------------------------------------------------------------------------------

def train_classifier(cfg: Config, restart: bool = False) -> int:
    """Train, evaluate and install the edu classifier; `ClassifierError` if it is no better than chance."""
    cc, run = cfg.classifier, RunDir(cfg.run_dir)
    started = time.perf_counter()
    check_writable(ClassifierError, run.classifier)
    docs, mode = load_labelled(cc, run)
    lineage = training_fingerprint(cc, run, cfg.seed, mode)  # of the files as read, not as they are after training
    if not restart and installed_from(cfg.run_dir, lineage):
        # the same inputs and settings: retraining would give the same model, and a rewritten
        # manifest would make every stage that recorded it as a parent (the filter) start over
        print(f"classifier: {run.classifier_model} is up to date (trained on these inputs and "
              "settings); nothing to do")
        return 0
    docs, skipped = prepare_examples(docs)
    docs = cap_documents(docs, cc.max_documents, cfg.seed)
    train_df, val_df = stratified_split(docs, cc.validation_fraction, cfg.seed, describe_labels(cc, mode))

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
    metrics["roc_auc_ci"] = roc_auc_interval(val_df["label"].to_numpy(), val_scores, seed=cfg.seed)
    train_metrics = evaluate_scores(train_df["label"].to_numpy(), scorer.score(train_df["text"].tolist()), 0.5,
                                    train_df["llm_score"].to_numpy(dtype=float) if mode == "labelled" else None)

    verdict, warnings = judge(metrics, val_scores, val_df["label"].to_numpy(), cc)
    report = build_manifest(
        "train-classifier", public_dict(cfg),
        mode=mode,
        label_rule=describe_labels(cc, mode),
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

    out = run.classifier if verdict == "accepted" else run.classifier_rejected
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{CLASSIFIER_MODEL}.{os.getpid()}.tmp"
    model.save_model(str(tmp))
    report["model_size_bytes"] = tmp.stat().st_size
    plot_classifier_report(val_df["label"].to_numpy(), val_scores, metrics, out / CLASSIFIER_FIGURE,
                           heading=f"edu classifier ({mode}: {describe_labels(cc, mode)}): {verdict}")
    write_json(report, out / CLASSIFIER_REPORT)
    os.replace(tmp, out / CLASSIFIER_MODEL)

    if verdict == "accepted":
        write_json(build_manifest("train-classifier", public_dict(cfg), verdict=verdict, lineage=lineage,
                                  outputs={relative_name(out / CLASSIFIER_MODEL, cfg.run_dir):
                                           content_digest(out / CLASSIFIER_MODEL)}),
                   out / MANIFEST)

    summary = f"validation n={metrics['n']}: {describe_metrics(metrics)}; trained in {train_s:.1f}s"
    if verdict != "accepted":
        raise ClassifierError(f"classifier {verdict}; {summary}; not installed (any earlier model is unchanged), "
                              f"see {out}/{CLASSIFIER_REPORT} and {CLASSIFIER_FIGURE}")
    shutil.rmtree(run.classifier_rejected, ignore_errors=True)  # an earlier refusal no longer describes this run
    print(f"classifier: {out / CLASSIFIER_MODEL}\n{summary}")
    for w in warnings:
        print(f"warning: {w}")
    return 0


def describe_metrics(m: dict[str, Any]) -> str:
    """ROC-AUC with its interval, F1 (P, R), and Spearman vs the LLM only where there are LLM scores."""
    ci = m.get("roc_auc_ci")
    auc = f"ROC-AUC {m['roc_auc']}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
    text = f"{auc}, F1 {m['f1']} (P {m['precision']}, R {m['recall']})"
    if m.get("spearman_vs_llm") is not None:
        text += f", Spearman vs LLM {m['spearman_vs_llm']}"
    return text


# --- lineage ---------------------------------------------------------------------------------

def training_files(cc: ClassifierConfig, run: RunDir, mode: str) -> tuple[list[str], bool]:
    """The files a training run reads, and whether they are the run's annotations."""
    if mode == "dclm":
        patterns = [*cc.positives, *cc.negatives]
    elif cc.input:
        patterns = list(cc.input)
    else:
        return [str(p) for p in list_shards(run.annotations)], True
    return [f.path for f in expand_inputs(patterns)], False


def training_fingerprint(cc: ClassifierConfig, run: RunDir, seed: int, mode: str) -> dict[str, Any]:
    """config = the classifier section and seed, inputs = the labelled files' digests, parents = the
    annotations' manifest when it trained on them."""
    paths, annotations = training_files(cc, run, mode)
    local = [p for p in paths if Path(p).is_file()]
    inputs = file_digests(local, run.root)
    inputs.update({p: "hub" for p in paths if p not in local})  # a Hub file has no local bytes to digest
    parents = {"annotations": manifest_ref(manifest_path(run.annotations), run.root)} if annotations else {}
    config = {"classifier": cc.model_dump(mode="json"), "seed": seed}
    return fingerprint(config, inputs, {k: v for k, v in parents.items() if v is not None})


def installed_from(run_dir: Path, lineage: dict[str, Any]) -> bool:
    """Whether the installed model was trained on exactly ``lineage`` and is still the file it wrote."""
    run = RunDir(run_dir)
    manifest_file = manifest_path(run.classifier)
    if not manifest_file.is_file() or not run.classifier_model.is_file():
        return False
    manifest = read_json(manifest_file)
    recorded = (manifest.get("outputs") or {}).get(relative_name(run.classifier_model, run_dir))
    return (describe_change(manifest.get("lineage") or {}, lineage) is None
            and recorded == content_digest(run.classifier_model))


def classifier_parent(run_dir: Path, model: Path) -> dict[str, str] | None:
    """``manifest_ref`` of ``classifier/manifest.json`` for the run's installed ``model``, for a stage that scores with it.

    None for a model outside ``run_dir`` (a user's own) or one no manifest names. `LineageError`
    (one line) when the model file no longer matches its manifest's ``outputs``, or when the
    annotations it was trained on changed since (their shard digests differ from the recorded inputs).
    """
    run_dir, model = Path(run_dir), Path(model)
    try:
        model.resolve().relative_to(run_dir.resolve())
    except ValueError:
        return None
    manifest_file = manifest_path(RunDir(run_dir).classifier)
    if not manifest_file.is_file() or not model.is_file():
        return None
    manifest = read_json(manifest_file)
    name = relative_name(model, run_dir)
    recorded = (manifest.get("outputs") or {}).get(name)
    if recorded is None:
        return None
    if content_digest(model) != recorded:
        raise LineageError(f"{name}: does not match classifier/{MANIFEST} (replaced after training?); "
                           "rerun `textbook train-classifier`, or set filter.quality.model to use it as your own")
    trained_on = {k: v for k, v in (manifest.get("lineage") or {}).get("inputs", {}).items()
                  if k.startswith("annotations/")}
    if trained_on:
        now = file_digests(list_shards(RunDir(run_dir).annotations), run_dir)
        change = describe_change({"inputs": trained_on}, {"inputs": now})
        if change is not None:
            raise LineageError(f"{name}: the edu classifier was trained on other annotations ({change}); "
                               "rerun `textbook train-classifier` on the current ones")
    return manifest_ref(manifest_file, run_dir)


# --- loading ---------------------------------------------------------------------------------

def load_labelled(cc: ClassifierConfig, run: RunDir) -> tuple[pd.DataFrame, str]:
    """Columns ``text``, ``label`` (0/1), ``llm_score`` (the raw label, NaN in DCLM mode), ``source``."""
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
        annotations = run.annotations
        if not list_shards(annotations):
            raise ClassifierError(f"no labelled data: {annotations} has no part-*.parquet "
                                  "(run `textbook annotate`, or set classifier.input or positives/negatives)")
        paths, key = [str(p) for p in list_shards(annotations)], "annotations"
    frame = read_column_frames(paths, [cc.text_column, cc.label_column], key)
    raw = frame[cc.label_column]
    values = parse_labels(raw, cc.label_column, frame["source"])
    docs = pd.DataFrame({"text": frame[cc.text_column], "llm_score": values, "source": frame["source"]})
    unlabelled = int(np.isnan(values).sum())
    if unlabelled == len(values):
        if key == "annotations":
            raise ClassifierError(f"all {unlabelled} annotations have no score (every LLM answer was unparseable: "
                                  f"see annotation_error in {run.annotations}); fix the model or "
                                  "template and rerun `textbook annotate --restart`")
        raise ClassifierError(f"{key}: all {unlabelled} documents have no {cc.label_column!r} label; "
                              "set classifier.label_column")
    docs["label"] = (values >= cc.threshold).astype(int)
    docs.attrs["unlabelled"] = unlabelled
    return docs[~np.isnan(values)].reset_index(drop=True), "labelled"


def read_column_frames(paths: list[str], columns: list[str], key: str) -> pd.DataFrame:
    """Read ``columns`` from every file (with a ``source`` column); one-line errors naming the file."""
    frames = []
    try:
        files = expand_inputs(paths)
        for f in _iterate(files, f"read {key}", "file", disable=len(files) < 2):
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


def describe_labels(cc: ClassifierConfig, mode: str) -> str:
    """The label rule in words."""
    if mode == "dclm":
        return "positive: classifier.positives; negative: classifier.negatives"
    return f"positive when {cc.label_column} >= {cc.threshold}"


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
    for text in _iterate(docs["text"], "normalise", "doc", disable=len(docs) < 20_000):
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

def judge(metrics: dict[str, Any], scores: np.ndarray, labels: np.ndarray,
          cc: ClassifierConfig) -> tuple[str, list[str]]:
    """``accepted`` or the reason to refuse the model, plus warnings a reader of the report needs.

    Refused: constant scores; a validation too small or scores too narrow to measure the model
    (unless ``classifier.accept_unreliable``); a ROC-AUC below ``classifier.min_auc``.
    """
    warnings = []
    small = min(metrics["positives"], metrics["negatives"])
    smaller = "positive" if metrics["positives"] <= metrics["negatives"] else "negative"
    if small < MIN_RELIABLE_PER_CLASS:
        warnings.append(f"only {small} validation documents in the smaller class: metrics are noisy")
    if metrics["f1"] == 0:
        warnings.append("no validation document scores >= 0.5: pick a threshold with filter.quality.keep_top "
                        "or validation.best_f1.threshold")
    if not np.isfinite(scores).all() or np.ptp(scores) == 0:
        return "rejected: validation scores are constant or NaN (degenerate training data)", warnings
    too_small = (f"only {small} {smaller} validation documents (classifier.min_validation_per_class="
                 f"{cc.min_validation_per_class})" if small < cc.min_validation_per_class else None)
    per_class = [np.quantile(scores[labels == c], SCORE_SPREAD_QUANTILES) for c in (0, 1) if (labels == c).any()]
    low, high = min(q[0] for q in per_class), max(q[1] for q in per_class)
    too_narrow = (f"validation scores span only {low:.3f}-{high:.3f} (classifier.min_score_spread="
                  f"{cc.min_score_spread:g})" if high - low < cc.min_score_spread else None)
    # Too few documents make the AUC meaningless, so that comes first; with enough of them a
    # chance-level AUC is the plainer verdict than the narrow scores it usually comes with.
    if too_small:
        refusal = unmeasured([too_small, too_narrow], cc, warnings)
        if refusal:
            return refusal, warnings
    auc = metrics["roc_auc"]
    if auc is None or auc < cc.min_auc:
        return f"rejected: validation ROC-AUC {auc} < classifier.min_auc={cc.min_auc} (0.5 is chance)", warnings
    if too_narrow and not too_small:
        refusal = unmeasured([too_narrow], cc, warnings)
        if refusal:
            return refusal, warnings
    return "accepted", warnings


def unmeasured(reasons: list[str | None], cc: ClassifierConfig, warnings: list[str]) -> str | None:
    """The refusal for a validation that cannot measure the model, or None (and a warning) when
    ``classifier.accept_unreliable`` installs it anyway."""
    reason = "; ".join(r for r in reasons if r)
    if not cc.accept_unreliable:
        return (f"rejected: validation cannot measure this model: {reason}; add labelled documents, or set "
                "classifier.accept_unreliable=true to install it anyway")
    warnings.append(f"installed unmeasured (classifier.accept_unreliable=true): {reason}")
    return None


def _iterate(items: Any, desc: str, unit: str, disable: bool = False) -> Any:
    """``items`` with progress reported (a bar on a terminal, periodic lines in a log)."""
    with progress(total=len(items), desc=desc, unit=unit, disable=disable) as bar:
        for item in items:
            yield item
            bar.update(1)
