"""A tiny run directory: filtered web text and generated textbooks/stories/conversations as Parquet,
and a config sized for seconds of CPU training (2 layers, 64 dims, 32-token sequences)."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.config import Config, load_config
from pipeline.io import shard_path, write_parquet
from pipeline.rundir import RunDir
from tests.conftest import SENTENCES

QUESTIONS = [
    ("Why is the sky blue?", "Sunlight scatters off air molecules, and blue light scatters the most."),
    ("What is a prime number?", "A number with exactly two divisors, one and itself, such as seven."),
    ("How do plants make food?", "By photosynthesis: they turn light, water and carbon dioxide into sugar."),
    ("What does Newton's second law say?", "Force equals mass times acceleration."),
    ("What is a list comprehension?", "A Python expression that builds a list from each item of another."),
]


def conversation(rng: random.Random) -> str:
    turns = rng.sample(QUESTIONS, k=2)
    return "\n".join(f"Student: {q}\nTeacher: {a}" for q, a in turns)


def document(rng: random.Random, k: int) -> str:
    return " ".join(rng.choice(SENTENCES) for _ in range(k))


def write_run(run_dir: Path, n_web: int = 160, n_gen: int = 90, seed: int = 0) -> Path:
    rng = random.Random(seed)
    web = pd.DataFrame({
        "id": [f"web-{i}" for i in range(n_web)],
        "text": [document(rng, rng.randint(2, 6)) for _ in range(n_web)],
        "source": ["crawl.parquet"] * n_web,
        "edu_score": [rng.uniform(0, 5) for _ in range(n_web)],
    })
    run = RunDir(run_dir)
    write_parquet(web.iloc[: n_web // 2], shard_path(run.filtered, 0))
    write_parquet(web.iloc[n_web // 2:], shard_path(run.filtered, 1))
    templates = ["textbook", "exercises", "story", "conversation", "wikihow"]
    gen_templates = [templates[i % len(templates)] for i in range(n_gen)]
    gen = pd.DataFrame({
        "id": [f"gen-{i}" for i in range(n_gen)],
        "text": [conversation(rng) if t == "conversation" else document(rng, rng.randint(3, 7))
                 for t in gen_templates],
        "template": gen_templates,
    })
    write_parquet(gen, shard_path(run.generated, 0))
    return run_dir


def tiny_overrides(run_dir: Path, *overrides: str) -> list[str]:
    """The command-line overrides of a tiny run (phase 1: 20 steps, phase 2: 10, SFT: 5)."""
    return [
        f"run_dir={run_dir}", "train.seq_len=32", "train.tokenizer.vocab_size=400",
        "train.phase1.tokens=2560", "train.phase1.batch_size=4", "train.phase1.warmup_steps=2",
        "train.phase2.tokens=1280", "train.phase2.batch_size=4", "train.phase2.warmup_steps=2",
        "train.sft.tokens=640", "train.sft.batch_size=4", "train.sft.warmup_steps=1",
        "train.eval_every=10", "train.eval_sequences=4", "train.checkpoint_every=5", "train.val_fraction=0.1",
        *overrides,
    ]


def tiny_config(run_dir: Path, *overrides: str) -> Config:
    return load_config(None, tiny_overrides(run_dir, *overrides))


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    """Tiny models on a shared machine: a second intra-op thread only waits for a core (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run")
