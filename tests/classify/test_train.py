"""`textbook train-classifier` and `textbook score`: honest held-out numbers, clear refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from filters.edu_score import EduClassifier
from pipeline.classify.config import ClassifierConfig
from pipeline.classify.report import classifier_figure, evaluate_scores
from pipeline.classify.train import (
    TrainParams,
    classifier_parent,
    judge,
    prepare_examples,
    stratified_split,
    train_fasttext,
)
from pipeline.cli import main
from pipeline.io import read_json, read_parquet, write_json, write_parquet
from pipeline.lineage import LineageError, content_digest, manifest_ref
from tests.classify.conftest import make_corpus

FAST = ["classifier.threads=1", "classifier.dim=32", "classifier.bucket=100000"]


def train(run_dir, *overrides: str) -> int:
    return main(["train-classifier", f"run_dir={run_dir}", *FAST, *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, labelled_parquet):
    run = tmp_path_factory.mktemp("run")
    assert train(run, f"classifier.input=[{labelled_parquet}]") == 0
    return run


@pytest.mark.slow
def test_training_writes_model_report_and_figure(trained):
    out = trained / "classifier"
    assert (out / "edu_fasttext.bin").stat().st_size > 0
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = read_json(out / "report.json")
    assert report["verdict"] == "accepted" and report["mode"] == "labelled"
    assert report["label_rule"] == "positive when score >= 3.0"
    counts = report["counts"]
    assert counts["train"] + counts["validation"] == counts["used"]
    assert counts["validation"] == pytest.approx(0.2 * counts["used"], abs=2)
    # stratified: both splits keep the corpus's positive share
    assert counts["validation_positives"] / counts["validation"] == pytest.approx(
        counts["train_positives"] / counts["train"], abs=0.02)
    assert report["training_time_s"] > 0 and report["model_size_bytes"] > 0
    assert "api_key" not in json.dumps(report["config"]) or report["config"]["generate"]["api_key"] is None


def test_held_out_metrics_are_sane(trained):
    report = read_json(trained / "classifier" / "report.json")
    v, t = report["validation"], report["train"]
    assert t["spearman_vs_llm"] is not None and t["n"] + v["n"] == report["counts"]["used"]
    cm = v["confusion_matrix"]
    assert cm["tp"] + cm["fp"] + cm["tn"] + cm["fn"] == v["n"]
    assert v["precision"] == pytest.approx(cm["tp"] / (cm["tp"] + cm["fp"]), abs=1e-5)
    assert v["recall"] == pytest.approx(cm["tp"] / (cm["tp"] + cm["fn"]), abs=1e-5)
    # The corpus's labels are noisy by construction (about 1 in 6 flipped), so near-perfect
    # numbers would mean leakage and chance-level ones a broken model.
    assert 0.7 < v["roc_auc"] < 0.95
    assert 0.65 < v["f1"] < 0.95
    assert 0.4 < v["spearman_vs_llm"] < 0.9
    assert 0 <= v["best_f1"]["threshold"] <= 1
    low, high = v["roc_auc_ci"]  # a seeded bootstrap: the interval around the point estimate
    assert low < v["roc_auc"] < high and high - low < 0.25


def test_score_cli_adds_edu_score(trained, tmp_path):
    docs = make_corpus(60, seed=11)
    src = tmp_path / "web.jsonl"
    src.write_text("".join(json.dumps({"url": f"u{i}", "text": t}) + "\n"
                           for i, t in enumerate(docs["text"])) + json.dumps({"url": "empty", "text": ""}) + "\n")
    out = tmp_path / "scored.parquet"
    assert main(["score", f"run_dir={trained}", "--input", str(src), "--output", str(out)]) == 0
    scored = read_parquet(out)
    assert list(scored.columns) == ["url", "text", "edu_score"] and len(scored) == 61
    assert scored["edu_score"].dtype == np.float32
    assert scored["edu_score"].between(0, 1).all() and scored["edu_score"].iloc[-1] == 0.0
    edu = (docs["score"] >= 3).to_numpy()
    s = scored["edu_score"].to_numpy()[:60]
    assert s[edu].mean() > s[~edu].mean() + 0.2


def test_score_cli_errors_name_the_problem(trained, tmp_path, capsys):
    src = tmp_path / "web.jsonl"
    src.write_text(json.dumps({"body": "no text column"}) + "\n")
    assert main(["score", f"run_dir={trained}", "--input", str(src), "--output", str(tmp_path / "o.parquet")]) == 2
    assert "missing text column 'text'" in capsys.readouterr().err
    assert main(["score", f"run_dir={tmp_path}", "--input", str(src), "--output", str(tmp_path / "o.parquet")]) == 2
    assert "classifier model not found" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def test_dclm_style_positives_vs_negatives(tmp_path, capsys):
    corpus = make_corpus(600, seed=4)
    edu = corpus["score"] >= 3
    pos = write_parquet(corpus[edu].rename(columns={"text": "body"}), tmp_path / "textbooks.parquet")
    neg = tmp_path / "web.jsonl"
    neg.write_text("".join(json.dumps({"body": t}) + "\n" for t in corpus[~edu]["text"]))
    assert train(tmp_path / "run", f"classifier.positives=[{pos}]", f"classifier.negatives=[{neg}]",
                 "classifier.text_column=body") == 0
    report = read_json(tmp_path / "run" / "classifier" / "report.json")
    assert report["mode"] == "dclm" and report["validation"]["spearman_vs_llm"] is None
    out = capsys.readouterr().out
    assert "Spearman" not in out and "None" not in out  # no LLM scores here: nothing to correlate with
    assert report["validation"]["roc_auc"] > 0.7
    assert EduClassifier.load(tmp_path / "run" / "classifier" / "edu_fasttext.bin").score(["a lesson"]).shape == (1,)


def test_annotations_are_the_default_input_and_failed_rows_are_skipped(tmp_path):
    corpus = make_corpus(400, seed=2)
    corpus["score"] = corpus["score"].astype("Float64")
    corpus.loc[::10, "score"] = pd.NA  # the LLM answer was unparseable: failed, no label
    write_parquet(corpus, tmp_path / "run" / "annotations" / "part-00000.parquet")
    assert train(tmp_path / "run") == 0
    report = read_json(tmp_path / "run" / "classifier" / "report.json")
    assert report["counts"]["skipped"]["unlabelled"] == 40
    assert report["counts"]["used"] + 40 + report["counts"]["skipped"]["duplicate"] == 400


@pytest.mark.slow
def test_bad_documents_are_counted_not_fatal(tmp_path):
    corpus = make_corpus(300, seed=6)
    extra = pd.DataFrame({
        "text": ["", "   ", "The water cycle moves water. " * 400_000, "caf\ufffd broken \ufffd bytes",
                 corpus["text"].iloc[0]],
        "score": [4, 1, 5, 2, corpus["score"].iloc[0]],
    })
    path = write_parquet(pd.concat([corpus[["text", "score"]], extra], ignore_index=True), tmp_path / "l.parquet")
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b'{"text": "invalid \xff\xfe utf-8 in a lesson about cells", "score": 4}\n')
    binary = write_parquet(pa.table({"text": pa.array([b"cells divide \xff\xfe in two", b"ok bytes"], pa.binary()),
                                     "score": [4, 1]}), tmp_path / "binary.parquet")
    assert train(tmp_path / "run", f"classifier.input=[{path}, {raw}, {binary}]") == 0
    counts = read_json(tmp_path / "run" / "classifier" / "report.json")["counts"]
    skipped = counts["skipped"]
    assert skipped["empty"] == 2 and skipped["truncated"] == 1 and skipped["duplicate"] >= 1
    assert skipped["invalid_utf8"] == 1  # decoded with replacement characters and kept, not dropped
    assert counts["used"] == 300 + 3 + 1 + 2 - skipped["duplicate"]


@pytest.mark.slow
def test_training_is_reproducible_after_other_models_in_the_process():
    """fastText reads memory left by earlier models; each training runs in a fresh process instead."""
    def split(corpus: pd.DataFrame) -> pd.DataFrame:
        docs, _ = prepare_examples(corpus.assign(label=(corpus["score"] >= 3).astype(int)))
        return stratified_split(docs, 0.2, 0, "score >= 3")[0]

    params = TrainParams(threads=1, dim=32, bucket=100_000)
    small = split(make_corpus(120, seed=21))
    train_fasttext(small["line"].tolist(), small["label"].tolist(), params)
    corpus = make_corpus(300, seed=6)
    extra = pd.DataFrame({"text": ["The water cycle moves water. " * 400_000, "caf\ufffd broken \ufffd bytes"],
                          "score": [5, 2]})
    docs = split(pd.concat([corpus[["text", "score"]], extra], ignore_index=True))
    runs = [train_fasttext(docs["line"].tolist(), docs["label"].tolist(), params) for _ in range(4)]
    assert [lr for _, lr in runs] == [params.lr] * 4  # no spurious "Encountered NaN" retries
    probe = make_corpus(20, seed=9)["text"].tolist()
    scores = [EduClassifier(model=m, path="<memory>", labels=list(m.labels)).score(probe) for m, _ in runs]
    assert all(np.array_equal(scores[0], other) for other in scores[1:])


@pytest.mark.parametrize(("overrides", "message"), [
    (["classifier.label_column=grade"], "missing column 'grade'"),
    (["classifier.threshold=9"], "usable documents are negative (positive when score >= 9.0)"),
    (["classifier.label_column=id"], "non-numeric value 'doc-0' (row 0)"),
    (["classifier.positives=[x.parquet]"], "must both be set"),
])
def test_bad_inputs_fail_before_training_with_one_line(tmp_path, labelled_parquet, capsys, overrides, message):
    assert train(tmp_path, f"classifier.input=[{labelled_parquet}]", *overrides) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "classifier").exists()


def test_missing_annotations_say_what_to_run(tmp_path, capsys):
    assert train(tmp_path) == 2
    assert "run `textbook annotate`" in capsys.readouterr().err


@pytest.mark.slow
def test_a_model_no_better_than_chance_is_refused(tmp_path, capsys):
    corpus = make_corpus(600, seed=8)
    corpus["score"] = np.random.default_rng(0).permutation(corpus["score"].to_numpy())  # labels carry no signal
    path = write_parquet(corpus, tmp_path / "random.parquet")
    assert train(tmp_path / "run", f"classifier.input=[{path}]") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: classifier rejected: validation ROC-AUC") and "\n" not in err
    assert "classifier.min_auc=0.6" in err
    assert not (tmp_path / "run" / "classifier" / "edu_fasttext.bin").exists()  # never installed
    rejected = tmp_path / "run" / "classifier" / "rejected"
    report = read_json(rejected / "report.json")
    assert report["verdict"].startswith("rejected") and report["validation"]["roc_auc"] < 0.6
    assert (rejected / "edu_fasttext.bin").exists() and (rejected / "report.png").exists()  # kept to inspect
    # Accepting a model (here by lowering the bar) installs it and drops the stale refusal.
    # (chance-level scores also bunch together: accepting them takes both keys)
    assert train(tmp_path / "run", f"classifier.input=[{path}]", "classifier.min_auc=0",
                 "classifier.accept_unreliable=true") == 0
    assert (tmp_path / "run" / "classifier" / "edu_fasttext.bin").exists() and not rejected.exists()


def test_annotations_without_any_score_say_so(tmp_path, capsys):
    corpus = make_corpus(50, seed=2).assign(score=None)  # every LLM answer was unparseable
    write_parquet(corpus, tmp_path / "run" / "annotations" / "part-00000.parquet")
    assert train(tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: all 50 annotations have no score") and "\n" not in err


def small_negative_class(tmp_path, negatives: int):
    corpus = make_corpus(600, seed=3)
    edu = corpus["score"] >= 3
    return write_parquet(pd.concat([corpus[edu].head(200), corpus[~edu].head(negatives)]), tmp_path / "few.parquet")


@pytest.mark.slow
def test_a_validation_class_too_small_to_measure_is_refused_unless_accepted(tmp_path, capsys):
    path = small_negative_class(tmp_path, 15)  # 20% held out: 3 negative validation documents
    assert train(tmp_path / "run", f"classifier.input=[{path}]") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: classifier rejected: validation cannot measure this model: only 3 negative "
                          "validation documents (classifier.min_validation_per_class=5)") and "\n" not in err
    assert "classifier.accept_unreliable=true" in err and "95% CI" in err
    assert not (tmp_path / "run" / "classifier" / "edu_fasttext.bin").exists()
    ci = read_json(tmp_path / "run" / "classifier" / "rejected" / "report.json")["validation"]["roc_auc_ci"]
    assert ci[1] - ci[0] > 0.2  # three negatives: the interval says how little the AUC means

    assert train(tmp_path / "run", f"classifier.input=[{path}]", "classifier.accept_unreliable=true",
                 "classifier.min_auc=0") == 0
    report = read_json(tmp_path / "run" / "classifier" / "report.json")
    assert report["verdict"] == "accepted"
    assert any(w.startswith("installed unmeasured (classifier.accept_unreliable=true): only 3 negative")
               for w in report["warnings"])


def test_scores_bunched_in_a_narrow_band_are_refused():
    # the reported case: a ROC-AUC over the bar, every validation score between 0.50 and 0.55
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(60, int), np.ones(60, int)]
    scores = np.r_[rng.uniform(0.50, 0.535, 60), rng.uniform(0.51, 0.55, 60)]
    metrics = evaluate_scores(labels, scores)
    assert metrics["roc_auc"] > 0.6
    verdict, _ = judge(metrics, scores, labels, ClassifierConfig())
    assert verdict.startswith("rejected: validation cannot measure this model: validation scores span only 0.50")
    assert "classifier.min_score_spread=0.1" in verdict
    assert judge(metrics, scores, labels, ClassifierConfig(accept_unreliable=True))[0] == "accepted"


def test_a_small_well_separated_class_is_not_called_narrow():
    # 5 generated textbooks scored high against 234 web pages scored near 0 (the demo's shape): the
    # pooled 5th-95th percentiles both lie among the web pages, but the model separates the classes
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(234, int), np.ones(5, int)]
    scores = np.r_[rng.uniform(0.0, 0.02, 234), rng.uniform(0.85, 0.99, 5)]
    verdict, _ = judge(evaluate_scores(labels, scores), scores, labels, ClassifierConfig())
    assert verdict == "accepted"


def test_report_figure_keeps_the_confusion_matrix_off_the_bars():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(40, int), np.ones(40, int)]
    scores = np.r_[rng.uniform(0.40, 0.55, 40), rng.uniform(0.45, 0.60, 40)]  # bars in the middle of the panel
    metrics = evaluate_scores(labels, scores)
    fig = classifier_figure(labels, scores, metrics)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    hist = next(ax for ax in fig.axes if ax.get_title() == "Scores per label")
    bars = [p.get_window_extent(renderer) for p in hist.patches if p.get_height() > 0]
    for text in hist.texts:
        box = text.get_window_extent(renderer)
        assert not any(box.overlaps(bar) for bar in bars), text.get_text()
    assert any(tuple(line.get_xdata()) == (0.5, 0.5) for line in hist.lines)  # the decision threshold
    cm = metrics["confusion_matrix"]
    drawn = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {str(cm[k]) for k in ("tp", "fp", "tn", "fn")} <= drawn


def test_classifier_manifest_traces_the_model_to_its_annotations(tmp_path):
    run = tmp_path / "run"
    shard = write_parquet(make_corpus(400, seed=2), run / "annotations" / "part-00000.parquet")
    write_json({"stage": "annotate"}, run / "annotations" / "manifest.json")
    assert train(run) == 0
    manifest = read_json(run / "classifier" / "manifest.json")
    model = run / "classifier" / "edu_fasttext.bin"
    assert manifest["outputs"] == {"classifier/edu_fasttext.bin": content_digest(model)}
    lineage = manifest["lineage"]
    assert lineage["inputs"] == {"annotations/part-00000.parquet": content_digest(shard)}
    assert lineage["parents"] == {"annotations": manifest_ref(run / "annotations" / "manifest.json", run)}
    assert lineage["config"]["classifier"]["threshold"] == 3.0

    assert classifier_parent(run, model) == manifest_ref(run / "classifier" / "manifest.json", run)
    own = tmp_path / "mine.bin"
    shutil.copy(model, own)
    assert classifier_parent(run, own) is None  # a user's own model has no lineage here
    shutil.copy(model, run / "classifier" / "copy.bin")
    assert classifier_parent(run, run / "classifier" / "copy.bin") is None  # no manifest names it

    write_parquet(make_corpus(400, seed=2).head(390), shard)  # the annotations changed since training
    with pytest.raises(LineageError, match=r"classifier/edu_fasttext.bin: the edu classifier was trained on other "
                                           r"annotations \(input annotations/part-00000.parquet changed\)"):
        classifier_parent(run, model)
    with model.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(LineageError, match="classifier/edu_fasttext.bin: does not match classifier/manifest.json"):
        classifier_parent(run, model)


@pytest.mark.slow
def test_a_rerun_on_the_same_inputs_keeps_the_installed_model_and_its_manifest(tmp_path, labelled_parquet, capsys):
    run = tmp_path / "run"
    assert train(run, f"classifier.input=[{labelled_parquet}]") == 0
    manifest = (run / "classifier" / "manifest.json").read_bytes()
    capsys.readouterr()
    assert train(run, f"classifier.input=[{labelled_parquet}]") == 0
    assert "is up to date" in capsys.readouterr().out
    assert (run / "classifier" / "manifest.json").read_bytes() == manifest  # the filter's parent stays valid
    assert train(run, f"classifier.input=[{labelled_parquet}]", "classifier.epoch=3") == 0  # settings changed
    assert (run / "classifier" / "manifest.json").read_bytes() != manifest
