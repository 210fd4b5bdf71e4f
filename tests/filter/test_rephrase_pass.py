"""The second pass over rephrased rows: keep_top per route by edu_score, and unfaithful rewrites rejected."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.io import read_shards
from tests.filter.conftest import write_jsonl
from tests.filters.corpus import SPAM, documents


def _generated(run: Path) -> pd.DataFrame:
    docs = documents(36, seed=11)
    # recycle rewrites of mixed quality: prose, and prose drowned in spam
    recycle = [d if i % 2 else f"{SPAM} {SPAM.lower()} item {i}. " + d.split("\n\n")[0][:200]
               for i, d in enumerate(docs[:20])]
    rows = [{"id": f"rec-{i}", "text": t, "route": "recycle", "flags": []} for i, t in enumerate(recycle)]
    rows += [{"id": f"high-{i}", "text": d, "route": "high", "flags": ["unfaithful"] if i < 2 else []}
             for i, d in enumerate(docs[20:30])]
    rows += [{"id": f"plain-{i}", "text": d, "route": None, "flags": []} for i, d in enumerate(docs[30:34])]
    frame = pd.DataFrame(rows)
    (run / "generated").mkdir(parents=True)
    frame.to_parquet(run / "generated" / "part-00000.parquet")
    return frame


@pytest.mark.parametrize("fraction", [0.25])
def test_keep_top_per_route_and_unfaithful_rewrites(tmp_path: Path, edu_model: Path, cluster: str,
                                                   capsys: pytest.CaptureFixture, fraction: float) -> None:
    run = tmp_path / "run"
    _generated(run)
    web = write_jsonl(tmp_path / "web.jsonl", [{"id": f"web-{i}", "text": t}
                                               for i, t in enumerate(documents(6, seed=5))])
    args = ["filter", f"run_dir={run}", f"filter.input=[{web}]", f"filter.quality.model={edu_model}",
            "filter.quality.threshold=0.5", "filter.minhash.enabled=false", f"scheduler={cluster}",
            f"filter.quality.keep_top_per_route={{recycle: {fraction}}}"]
    assert main(args) == 0
    assert "keep_top_per_route recycle=0.25 of 20 rewrites" in capsys.readouterr().out
    kept = read_shards(run / "filtered")
    rejected = read_shards(run / "filtered" / "rejected")
    reasons = dict(zip(rejected["id"], rejected["filter_reason"], strict=True))
    kept_recycle = kept[kept["id"].str.startswith("rec-")]
    cut = rejected[rejected["filter_reason"] == "rephrase:below_route_keep"]
    assert len(kept_recycle) + len(cut) == 20 and len(cut) > 0
    assert len(kept_recycle) >= math.ceil(fraction * 20) and len(kept_recycle) < 10
    assert kept_recycle["edu_score"].min() >= cut["edu_score"].max()  # the best rewrites survive
    assert set(cut["id"]) <= {f"rec-{i}" for i in range(20)}
    assert reasons["high-0"] == reasons["high-1"] == "rephrase:unfaithful"
    assert {f"high-{i}" for i in range(2, 10)} | {f"plain-{i}" for i in range(4)} <= set(kept["id"])

    # without the keys the same run keeps every rewrite that is faithful (the pass is opt-in per route)
    assert main([*args[:-1], "filter.quality.reject_unfaithful=false"]) == 0
    kept = read_shards(run / "filtered")
    assert {f"rec-{i}" for i in range(20)} | {"high-0", "high-1"} <= set(kept["id"])
