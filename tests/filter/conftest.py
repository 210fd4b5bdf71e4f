"""Fixtures for the filter stage: a real Dask cluster, a tiny fastText edu model, planted inputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from filters.edu_score import normalize_for_fasttext
from pipeline.classify.train import TrainParams, train_fasttext
from pipeline.cluster import local_cluster
from tests.filters.corpus import SPAM, documents, near_duplicate

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")
ANSWER = "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and May. #### 72"


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    """Address of a two-process LocalCluster shared by the filter tests (starting one costs seconds)."""
    with local_cluster(workers=2) as c:
        yield c.scheduler_address


@pytest.fixture(scope="session")
def edu_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fastText model that scores varied prose high and shouting spam low.

    Trained with the project's `train_fasttext` (a fresh process per attempt): fastText trained
    in a process that already held other models can diverge to NaN.
    """
    folder = tmp_path_factory.mktemp("classifier")
    good = [normalize_for_fasttext(t) for t in documents(40, seed=100)]
    bad = [normalize_for_fasttext(f"{SPAM} Offer number {i} ends soon, call now!") for i in range(40)]
    params = TrainParams(epoch=10, lr=0.1, dim=16, min_count=1, bucket=20_000, threads=1)
    model, _ = train_fasttext(good + bad, [1] * len(good) + [0] * len(bad), params)
    model.save_model(str(folder / "edu_fasttext.bin"))
    return folder / "edu_fasttext.bin"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def planted(tmp_path: Path, edu_model: Path, request: pytest.FixtureRequest) -> dict:
    """A run dir with web JSONL (ids given), web Parquet (no ids), generated shards and a benchmark file.

    Planted: an exact copy, a near-duplicate, spam, an empty and a null text, a 10 MB document
    (unless the test is marked ``light``), and a generated document that quotes a GSM8K question.
    """
    light = request.node.get_closest_marker("light") is not None
    docs = documents(48, seed=3)
    web = [{"id": f"web-{i}", "text": t} for i, t in enumerate(docs[:30])]
    web += [{"id": "copy-of-0", "text": docs[0].replace("\n\n", "\n\n\n")},  # same after normalisation
            {"id": "near-1", "text": near_duplicate(docs[1], seed=1)},
            {"id": "spam", "text": SPAM + " " + SPAM.lower()},
            {"id": "empty", "text": ""}, {"id": "null", "text": None},
            {"id": "huge", "text": "" if light else docs[2] * (10_000_000 // len(docs[2]))}]
    write_jsonl(tmp_path / "web.jsonl", web)
    pd.DataFrame({"text": docs[30:40]}).to_parquet(tmp_path / "more.parquet")
    run = tmp_path / "run"
    (run / "generated").mkdir(parents=True)
    pd.DataFrame({"id": ["gen-0", "gen-1", "gen-2"],
                  "text": [docs[40], f"{docs[41]}\n\nExercise. {QUESTION}\n\nSolution. {ANSWER}",
                           "## Fractions\n" + "\n".join(f"- fraction {i}/{i + 1} of a pizza" for i in range(1, 8))]}).to_parquet(run / "generated" / "part-00000.parquet")
    write_jsonl(tmp_path / "gsm8k_test.jsonl", [{"question": QUESTION, "answer": ANSWER},
                                                {"question": "What is two plus two in this story?", "answer": "4"}])
    overrides = [f"run_dir={run}", f"filter.input=[{tmp_path / 'web.jsonl'}, {tmp_path / 'more.parquet'}]",
                 "filter.text_column=text", f"filter.quality.model={edu_model}", "filter.quality.threshold=0.5",
                 f"filter.decontaminate.benchmarks=[{{name: gsm8k, path: {tmp_path / 'gsm8k_test.jsonl'}}}]",
                 "filter.partition_rows=16"] + (["filter.minhash.enabled=false"] if light else [])
    return {"root": tmp_path, "run": run, "docs": docs, "overrides": overrides}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "light: planted inputs without the 10 MB page, MinHash off (fast reruns)")


@pytest.fixture
def dedup_corpus(tmp_path: Path) -> dict:
    """90 documents in one Parquet file (9 partitions of 10: two reducers) with planted exact copies,
    near-duplicates and a cluster of five; the dedup-only overrides of a run (without run_dir)."""
    docs = documents(70, seed=31)
    texts = docs + [docs[k].upper() for k in range(5)]  # exact copies
    texts += [near_duplicate(docs[k], seed=k) for k in range(5, 15)]  # near-duplicates
    texts += [near_duplicate(near_duplicate(docs[15], seed=1), seed=2, edits=2) for _ in range(1)]
    texts += [near_duplicate(docs[16], seed=s, edits=2) for s in range(4)]  # a cluster of five
    path = tmp_path / "web.parquet"
    pd.DataFrame({"id": [f"d{i:03d}" for i in range(len(texts))], "text": texts}).to_parquet(path)
    base = [f"filter.input=[{path}]", "filter.include_generated=false", "filter.quality.enabled=false",
            "filter.language.enabled=false", "filter.heuristics.enabled=false", "filter.partition_rows=10",
            "workers=2"]
    return {"path": path, "overrides": base, "documents": len(texts)}
