"""The language filter in the filter stage: first after the length bounds, on web text, with its reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.config import load_config
from pipeline.filter.runner import run_filter
from pipeline.io import read_shards, shard_path, write_parquet
from tests.filter.conftest import write_jsonl
from tests.filters.corpus import documents

GERMAN = ("Die Photosynthese ist der Vorgang, bei dem grüne Pflanzen mit Hilfe von Sonnenlicht aus Wasser und "
          "Kohlendioxid Zucker herstellen. Dabei wird Sauerstoff frei, den wir zum Atmen brauchen. In den "
          "Blättern sitzen die Chloroplasten, die das Licht einfangen und die Energie in chemische Bindungen "
          "umwandeln. Ohne diesen Prozess gäbe es kein Leben auf der Erde, wie wir es kennen. ") * 2


def test_a_german_page_is_rejected_as_language_not_as_a_heuristic(tmp_path: Path, cluster: str) -> None:
    english = documents(3, seed=5)
    web = write_jsonl(tmp_path / "web.jsonl", [{"id": f"en{i}", "text": t} for i, t in enumerate(english)]
                      + [{"id": "de0", "text": GERMAN}])
    generated = pd.DataFrame({"id": ["gen0"], "text": [GERMAN], "template": ["textbook"]})
    write_parquet(generated, shard_path(tmp_path / "run" / "generated", 0))
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"filter.input=[{web}]", "filter.quality.enabled=false",
                             "filter.minhash.enabled=false"])
    assert run_filter(cfg, scheduler=cluster) == 0
    out = tmp_path / "run" / "filtered"
    rejected = read_shards(out / "rejected").set_index("id")
    assert rejected.loc["de0", "filter_reason"] == "language:de"
    assert rejected.loc["de0", "language_score"] > 0.9
    kept = read_shards(out).set_index("id")
    assert "gen0" in kept.index and kept.loc["gen0", "language"] == "de"  # generated: scored, not judged
    assert (kept.loc[[i for i in kept.index if i.startswith("en")], "language"] == "en").all()
    stages = [s["stage"] for s in json.loads((out / "stats.json").read_text())["stages"]]
    assert stages.index("language") < stages.index("heuristics")
