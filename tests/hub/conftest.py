"""A realistic small run directory, written with pipeline.io as the stages write theirs."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import public_dict, validate
from pipeline.io import build_manifest, shard_path, write_json, write_parquet
from tests.conftest import SENTENCES

# a 1x1 PNG: the stages' report figures are copied, not drawn, by the card
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
TOPICS = ["photosynthesis", "prime numbers", "the French Revolution", "linear equations", "cells"]
AUDIENCES = ["young children", "high school students", "researchers"]
STYLES = ["textbook", "casual", "socratic"]
TEMPLATES = {"textbook": "a1b2c3d4", "story": "e5f6a7b8", "conversation": "c9d0e1f2"}


def _text(i: int, template: str) -> str:
    body = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(3))
    if template == "story":
        return "Once upon a time " + body  # a collapsed opening the card must expose
    if template == "conversation":
        return (f"Student: Can you explain {TOPICS[i % 5]}?\nTeacher: {SENTENCES[i % 12]}\n"
                f"Student: Why does that matter?\nTeacher: {SENTENCES[(i + 3) % 12]}")
    return f"Chapter {i}: {TOPICS[i % 5]}. {body}"


def generated_frame(n: int = 60) -> pd.DataFrame:
    rows = []
    for i in range(n):
        template = list(TEMPLATES)[i % 3]
        truncated = i % 10 == 0
        rows.append({
            "id": f"g{i:04d}", "text": _text(i, template), "prompt": f"Write about {TOPICS[i % 5]}.",
            "template": template, "template_sha": TEMPLATES[template], "topic": TOPICS[i % 5],
            "subtopic": f"{TOPICS[i % 5]} basics", "audience": AUDIENCES[i % 3], "style": STYLES[i % 2],
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "temperature": 0.8, "max_tokens": 256,
            "finish_reason": "length" if truncated else "stop", "prompt_tokens": 40 + i % 7,
            "completion_tokens": 200 + i, "latency_s": 0.5 + i / 100,
            "flags": ["truncated"] if truncated else [],
        })
    return pd.DataFrame(rows)


def build_run(run: Path, tiny_llama: Path | None = None, secret: str = "sk-test-secret") -> Path:
    cfg = validate({"run_dir": str(run), "generate": {"api_key": secret, "price_input_per_million": 0.15,
                                                      "price_output_per_million": 0.6}})
    config = public_dict(cfg)
    df = generated_frame()
    write_parquet(df.iloc[:30], shard_path(run / "generated", 0))
    write_parquet(df.iloc[30:], shard_path(run / "generated", 1))
    write_json(build_manifest("generate", config, totals={"requests": 62, "rows": 60},
                              ledger={"requests": 62, "prompt_tokens": 2_600, "completion_tokens": 13_770,
                                      "price_input_per_million": 0.15, "price_output_per_million": 0.6,
                                      "max_cost_usd": None, "cost_usd": 0.008652}),
               run / "generated" / "manifest.json")

    web = pd.DataFrame({"id": [f"w{i}" for i in range(40)], "text": [SENTENCES[i % 12] * 2 for i in range(40)],
                        "source": ["web.parquet"] * 40, "edu_score": [i / 40 for i in range(40)]})
    kept_generated = df.iloc[:10][["id", "text"]].assign(source="generated", edu_score=0.9)
    write_parquet(pd.concat([web, kept_generated], ignore_index=True), shard_path(run / "filtered", 0))
    write_parquet(web.iloc[:5].assign(filter_reason="near_dup"), shard_path(run / "filtered" / "rejected", 0))
    stages = [("normalize", 120, 120), ("heuristics", 120, 100), ("quality", 100, 80),
              ("exact_dedup", 80, 70), ("minhash", 70, 60), ("decontaminate", 60, 50)]
    write_json({"stages": [{"stage": s, "docs_in": a, "docs_out": b, "docs_removed": a - b,
                            "bytes_in": a * 300, "bytes_out": b * 300} for s, a, b in stages],
                "decontamination": {"gsm8k": {"items": 1319, "items_indexed": 1300, "documents_hit": 7,
                                              "unique_items_hit": 5},
                                    "mmlu": {"items": 14042, "items_indexed": 14000, "documents_hit": 3,
                                             "unique_items_hit": 3}},
                "documents_in": 120, "documents_out": 50, "kept_by_source": {"web.parquet": 40, "generated": 10},
                "timings_s": {"validate": 0.4, "score": 2.5}},
               run / "filtered" / "stats.json")

    metrics = {"n": 40, "threshold": 0.5, "precision": 0.81, "recall": 0.77, "f1": 0.79, "accuracy": 0.8,
               "roc_auc": 0.88, "average_precision": 0.85, "spearman_vs_llm": None,
               "confusion_matrix": {"tn": 17, "fp": 4, "fn": 4, "tp": 15}}
    write_json(build_manifest("train-classifier", config, mode="dclm", verdict="accepted", warnings=[],
                              counts={"train": 160, "validation": 40}, validation=metrics,
                              train={**metrics, "f1": 0.93}), run / "classifier" / "report.json")
    (run / "classifier" / "report.png").write_bytes(PNG)
    (run / "filtered" / "report.png").write_bytes(PNG)

    if tiny_llama is not None:
        ckpt = run / "checkpoints" / "sft"
        shutil.copytree(tiny_llama, ckpt)
        write_json({"phase": "sft", "steps": 12, "steps_done": 12, "tokens": 24_576,
                    "tokens_per_source": {"chat": 24_576}, "tokens_per_s": 1500.0, "train_time_s": 16.4,
                    "final_val": {"chat": {"loss": 3.21, "bpb": 1.87, "targets": 900}}},
                   ckpt / "train_summary.json")
        write_json(build_manifest("train", config, phase="sft"), ckpt / "manifest.json")
    return run


@pytest.fixture
def run_dir(tmp_path: Path, tiny_llama: Path) -> Path:
    return build_run(tmp_path / "run", tiny_llama)
