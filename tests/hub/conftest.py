"""A realistic small run directory, whose artifacts are built by the stages' own code where it is cheap.

The manifests and reports come from the producing functions (``build_manifest``, the generate
``Ledger`` and diversity report, the classifier's ``evaluate_scores``, the filter's ``stage_table``
and ``decontamination_report``) or, where a stage builds a dict inline, copy its exact keys
(noted below), so a stage that renames a field breaks a hub test instead of a published card.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.classify.report import evaluate_scores
from pipeline.classify.train import describe_labels
from pipeline.config import public_dict, validate
from pipeline.filter.report import decontamination_report, stage_table
from pipeline.generate.diversity import diversity_report
from pipeline.generate.sampler import SEED_VARIABLES
from pipeline.hub.provenance import stage_manifests
from pipeline.io import build_manifest, list_shards, read_json, shard_path, write_json, write_parquet
from pipeline.lineage import file_digests, fingerprint, manifest_ref
from pipeline.llm.ledger import Ledger
from pipeline.llm.rows import COMPLETION_COLUMNS
from pipeline.rundir import LOSS_FIGURE, SHARD_GLOB, TRAIN_SUMMARY, RunDir, manifest_path
from tests.conftest import SENTENCES

# a 1x1 PNG: the stages' report figures are copied, not drawn, by the card
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
TOPICS = ["photosynthesis", "prime numbers", "the French Revolution", "linear equations", "cells"]
AUDIENCES = ["young children", "high school students", "researchers"]
STYLES = ["textbook", "casual"]
TEMPLATES = {"textbook": "a1b2c3d4e5f60718", "story": "e5f6a7b8c9d0e1f2", "conversation": "c9d0e1f2a3b4c5d6"}
# the seed variables each template declares (stories use words and features, not the taxonomy)
REQUIRES = {"textbook": ["subject", "topic", "subtopic", "audience", "style"],
            "story": ["noun", "verb", "adjective", "features"],
            "conversation": ["subject", "topic", "subtopic", "audience"]}
# the diversity gate's message for the collapsed story opening (see pipeline.generate.runner)
GATE = ("opening 'once upon a' starts 33% of rows, over generate.diversity_max_opening_share=25%; "
        "vary the prompts or raise the limit")
# validation labels and edu scores: 17 true negatives, 4 false positives, 4 false negatives, 15 true positives
VAL_LABELS = np.array([0] * 21 + [1] * 19)
VAL_SCORES = np.r_[np.linspace(0.05, 0.45, 17), np.linspace(0.55, 0.7, 4),
                   np.linspace(0.3, 0.45, 4), np.linspace(0.6, 0.95, 15)]


def _text(i: int, template: str) -> str:
    body = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(3))
    if template == "story":
        return "Once upon a time " + body  # a collapsed opening the card must expose
    if template == "conversation":
        return (f"Student: Can you explain {TOPICS[i % 5]}?\nTeacher: {SENTENCES[i % 12]}\n"
                f"Student: Why does that matter?\nTeacher: {SENTENCES[(i + 3) % 12]}")
    return f"Chapter {i}: {TOPICS[i % 5]}. {body}"


def generated_frame(n: int = 60) -> pd.DataFrame:
    """Rows with the columns `textbook generate` writes: request passthrough, seed variables, completion."""
    rows = []
    for i in range(n):
        template = list(TEMPLATES)[i % 3]
        truncated = i % 10 == 0
        seeds = {"subject": "science", "topic": TOPICS[i % 5], "subtopic": f"{TOPICS[i % 5]}, part {i}",
                 "audience": AUDIENCES[i % 3], "style": STYLES[i % 2],
                 "noun": "lantern", "verb": "climb", "adjective": "brave", "features": "a twist"}
        rows.append({
            "id": f"g{i:04d}", "prompt": f"Write about {TOPICS[i % 5]}.",
            "template": template, "template_sha": TEMPLATES[template],
            **{k: v if k in REQUIRES[template] else None for k, v in seeds.items()},
            "text": _text(i, template), "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "temperature": 0.8,
            "max_tokens": 256, "finish_reason": "length" if truncated else "stop", "prompt_tokens": 40 + i % 7,
            "completion_tokens": 200 + i, "latency_s": 0.5 + i / 100, "flags": ["truncated"] if truncated else [],
        })
    # generate's completion column is "text" (run_requests' completion_column default)
    return pd.DataFrame(rows).reindex(columns=["id", "prompt", "template", "template_sha", *SEED_VARIABLES,
                                               "text", *COMPLETION_COLUMNS])


# where the run's web text came from: a local file outside the run directory, as `make demo WEB=...` reads it
WEB_INPUT = "/home/someone/corpora/web.jsonl"


def build_run(run: Path, tiny_llama: Path | None = None, secret: str = "sk-test-secret") -> Path:
    """Manifests follow the lineage convention (``lineage`` with parents, ``outputs`` of data stages),
    except the classifier's report, which stands for a stage that does not record it yet."""
    cfg = validate({"run_dir": str(run),
                    "generate": {"api_key": secret, "price_input_per_million": 0.15, "price_output_per_million": 0.6},
                    "classifier": {"positives": [str(RunDir(run).generated / SHARD_GLOB)],
                                   "negatives": [WEB_INPUT]},  # DCLM style, as the demo trains it
                    "filter": {"input": [WEB_INPUT],
                               "decontaminate": {"benchmarks": [{"name": "gsm8k"}, {"name": "mmlu"}]}}})
    config = public_dict(cfg)
    df = generated_frame()
    write_parquet(df.iloc[:30], shard_path(RunDir(run).generated, 0))
    write_parquet(df.iloc[30:], shard_path(RunDir(run).generated, 1))
    _generate_manifest(run, config, df)
    _filter_outputs(run, config, df)
    _classifier_report(run, cfg, config)
    if tiny_llama is not None:
        _checkpoint(run, config, tiny_llama)
    return run


def _generate_manifest(run: Path, config: dict, df: pd.DataFrame) -> None:
    """As `pipeline.llm.run.run_requests` then `generate` write it (totals keys copied from there)."""
    ledger = Ledger(0.15, 0.6, None, requests=62, prompt_tokens=int(df.prompt_tokens.sum()),
                    completion_tokens=int(df.completion_tokens.sum()))
    templates = {name: {"sha": sha, "requires": REQUIRES[name], "about": f"A {name} for the card's tests."}
                 for name, sha in TEMPLATES.items()}
    manifest = build_manifest("generate", config, totals={
        "requests": 62, "rows": 60, "new_rows": 60, "shards": 2, "complete": False, "elapsed_s": 12.5},
        ledger=ledger.as_dict(), stop_reason=None, templates=templates)
    manifest["diversity"] = {**diversity_report(df["text"].tolist()), "gate": GATE}
    manifest["lineage"] = fingerprint(config=config["generate"])
    write_json(manifest, manifest_path(RunDir(run).generated))
    record_outputs(run, "generated")


def record_outputs(run: Path, folder: str) -> None:
    """Set ``outputs`` of ``folder/manifest.json`` to the shards now in the folder, as the stage writes it,
    and re-link the manifests downstream of it, as rerunning those stages would."""
    manifest = read_json(manifest_path(run / folder))
    manifest["outputs"] = file_digests([*list_shards(run / folder), *list_shards(run / folder / "rejected")], run)
    write_json(manifest, manifest_path(run / folder))
    relink(run)


def relink(run: Path) -> None:
    """Point every manifest's parents at the parent manifests as they are now, in pipeline order."""
    for path in stage_manifests(run):
        manifest = read_json(path)
        parents = (manifest.get("lineage") or {}).get("parents") or {}
        if parents:
            for name, ref in parents.items():
                parents[name] = manifest_ref(run / ref["manifest"], run)
            write_json(manifest, path)


def _filter_outputs(run: Path, config: dict, df: pd.DataFrame) -> None:
    """Kept and rejected shards, stats.json (keys of `pipeline.filter.runner._summarise` + run_filter) and manifest."""
    web = pd.DataFrame({"id": [f"w{i}" for i in range(40)], "text": [SENTENCES[i % 12] * 2 for i in range(40)],
                        "source": ["web.parquet"] * 40, "edu_score": [i / 40 for i in range(40)]})
    kept_generated = df.iloc[:10][["id", "text"]].assign(source="generated", edu_score=0.9)
    write_parquet(pd.concat([web, kept_generated], ignore_index=True), shard_path(RunDir(run).filtered, 0))
    write_parquet(web.iloc[:5].assign(filter_reason="near_dup"), shard_path(RunDir(run).rejected, 0))
    removed = {"gopher:word_count": [20, 6_000], "quality": [20, 6_000], "exact_dup": [10, 3_000],
               "near_dup": [10, 3_000], "decontam:gsm8k": [10, 3_000]}
    matches = ["gsm8k:0", "gsm8k:1", "gsm8k:2", "gsm8k:3", "gsm8k:4", "gsm8k:0", "gsm8k:1",
               "mmlu:7", "mmlu:8", "mmlu:9"]
    bins = np.linspace(0, 1, 21)
    stats = {
        "documents_in": 120, "bytes_in": 36_000, "documents_out": 50, "bytes_out": 15_000,
        "kept_by_source": {WEB_INPUT: 40, "generated": 10},  # keyed by the input path as given
        "stages": stage_table(120, 36_000, removed),
        "removed_by_reason": removed,
        # every hit in the input; two gsm8k documents had already gone as duplicates
        "decontamination": decontamination_report(matches, matches[2:], {"gsm8k": 1319, "mmlu": 14042},
                                                  {"gsm8k": 1300, "mmlu": 14000}),
        "edu_hist": {"bins": bins.tolist(), "scored": [6] * 20, "kept": [0] * 10 + [5] * 10},
        "quality": {"threshold": 0.4821, "keep_top": 0.5},
        "minhash": {"bands": 9, "rows": 13},
        "bad_files": [],
        "timings_s": {"validate": 0.4, "score": 2.5},
    }
    write_json(stats, RunDir(run).filter_stats)
    lineage = fingerprint(config=config["filter"], inputs={WEB_INPUT: "d1d1d1d1d1d1d1d1"},
                          parents={"generate": manifest_ref(manifest_path(RunDir(run).generated), run)})
    write_json(build_manifest("filter", config, output_key="0123456789abcdef",
                              inputs=[{"path": WEB_INPUT, "digest": "d1"}], documents_in=120,
                              documents_out=50, timings_s=stats["timings_s"], lineage=lineage),
               manifest_path(RunDir(run).filtered))
    record_outputs(run, "filtered")
    RunDir(run).filter_report.write_bytes(PNG)


def _classifier_report(run: Path, cfg, config: dict) -> None:
    """As `pipeline.classify.train.train_classifier` writes report.json (its keys copied from there)."""
    metrics = evaluate_scores(VAL_LABELS, VAL_SCORES, 0.5)
    train = evaluate_scores([0] * 80 + [1] * 80, np.r_[np.linspace(0, 0.48, 80), np.linspace(0.52, 1, 80)])
    report = build_manifest(
        "train-classifier", config, mode="dclm", label_rule=describe_labels(cfg.classifier, "dclm"), verdict="accepted",
        warnings=["only 19 validation documents in the smaller class: metrics are noisy"],
        counts={"used": 200, "train": 160, "validation": 40, "train_positives": 80, "validation_positives": 19,
                "skipped": {"unlabelled": 0, "not_text": 0, "empty": 0, "duplicate": 2}},
        validation=metrics, train=train,
        validation_score_quantiles={str(q): float(np.quantile(VAL_SCORES, q)) for q in (0.1, 0.5, 0.9)},
        learning_rate=0.2, training_time_s=0.8, total_time_s=1.2, model_size_bytes=123_456)
    write_json(report, RunDir(run).classifier_report)
    RunDir(run).classifier_figure.write_bytes(PNG)


def _checkpoint(run: Path, config: dict, tiny_llama: Path) -> None:
    """A saved sft checkpoint with train_summary.json (the keys `pipeline.train.loop` writes)."""
    ckpt = RunDir(run).checkpoint("sft")
    shutil.copytree(tiny_llama, ckpt)
    (ckpt / LOSS_FIGURE).write_bytes(PNG)
    write_json({"phase": "sft", "steps": 12, "steps_done": 12, "stopped_early": False,
                "init_from": str(RunDir(run).checkpoint("phase2")), "tokens": 24_576, "tokens_per_step": 2048,
                "seq_len": 128, "mixture": {"chat": 1.0}, "tokens_per_source": {"chat": 24_576},
                "sequences_per_source": {"chat": 192}, "source_stats": {"chat": {"conversations": 18}},
                "final_train_loss": 3.4, "final_val": {"chat": {"loss": 3.21, "bpb": 1.87, "targets": 900}},
                "tokens_per_s": 1500.0, "mfu": None, "flops_per_token": 1_000_000, "parameters": 206_400,
                "device": "cpu", "world_size": 1, "train_time_s": 16.4, "checkpoints": ["step-000012"]},
               ckpt / TRAIN_SUMMARY)
    lineage = fingerprint(config=config["train"], parents={
        "chat": manifest_ref(manifest_path(RunDir(run).generated), run),
        "web": manifest_ref(manifest_path(RunDir(run).filtered), run)})
    write_json(build_manifest("train", config, phase="sft", init_from=str(RunDir(run).checkpoint("phase2")),
                              sources={"chat": {"rows": 18}}, tokenizer="tokenizer", lineage=lineage,
                              outputs=file_digests([ckpt / "model.safetensors"], run)), manifest_path(ckpt))


@pytest.fixture
def run_dir(tmp_path: Path, tiny_llama: Path) -> Path:
    return build_run(tmp_path / "run", tiny_llama)
