"""`run_filter` end to end on a real Dask cluster: what is kept, what is rejected and why, resume."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.filter.inputs import document_id
from pipeline.filter.runner import run_filter
from pipeline.io import read_shards
from tests.filter.conftest import ANSWER, QUESTION, write_jsonl
from tests.filters.corpus import documents


def run(planted: dict, cluster: str, *extra: str) -> Path:
    cfg = load_config(None, [*planted["overrides"], *extra])
    assert run_filter(cfg, scheduler=cluster) == 0
    return planted["run"] / "filtered"


@pytest.mark.slow
def test_filter_end_to_end(planted: dict, cluster: str, capsys: pytest.CaptureFixture) -> None:
    out = run(planted, cluster, "filter.minhash.verify_threshold=0.75")
    kept, rejected = read_shards(out), read_shards(out / "rejected")
    reason = dict(zip(rejected.id, rejected.filter_reason, strict=True))

    # every input document is in exactly one of kept/ and rejected/
    assert len(kept) + len(rejected) == 36 + 10 + 3
    assert not set(kept.id) & set(rejected.id)

    # the planted problems, each with a reason that says which stage removed it
    assert reason["empty"] == reason["null"] == "length:empty"
    assert reason["huge"] == "length:too_long"
    assert reason["spam"].startswith(("gopher", "c4", "fineweb", "quality"))
    assert {reason.get("copy-of-0"), reason.get("web-0")} == {"exact_dup", None}
    assert {reason.get("near-1"), reason.get("web-1")} == {"near_dup", None}
    assert reason["gen-1"] == "decontam:gsm8k"
    # generated documents skip the web heuristics by default; dedup and decontamination still apply
    assert "gen-2" in set(kept.id) and "gen-0" in set(kept.id)

    # contract columns; scores stored; ids kept when given, made stably when absent
    for column in ("id", "text", "source", "edu_score", "cluster_id", "cluster_size", "decontam_hits",
                   "gopher_words", "c4_sentences", "fw_line_punct"):
        assert column in kept.columns
    assert set(kept.source) == {str(planted["root"] / "web.jsonl"), str(planted["root"] / "more.parquet"),
                                "generated"}
    parquet_ids = kept[kept.source.str.endswith("more.parquet")].id
    assert set(parquet_ids) <= {document_id(str(planted["root"] / "more.parquet"), r) for r in range(10)}
    assert kept.edu_score.between(0, 1).all()
    survivor = kept[kept.id.isin(["web-1", "near-1"])].iloc[0]
    assert survivor.cluster_size == 2

    stats = json.loads((out / "stats.json").read_text())
    assert [s["stage"] for s in stats["stages"]] == ["normalize", "language", "heuristics", "quality", "decontaminate",
                                                      "exact_dedup", "minhash"]
    assert stats["documents_in"] == 49 and stats["documents_out"] == len(kept)
    for before, after in zip(stats["stages"], stats["stages"][1:], strict=False):
        assert after["docs_in"] == before["docs_out"] and after["bytes_in"] == before["bytes_out"]
    assert stats["stages"][0]["bytes_removed"] > 9_000_000  # the 10 MB page
    assert stats["decontamination"]["gsm8k"] == {"items": 2, "items_indexed": 1, "documents_hit": 1,
                                                 "unique_items_hit": 1, "documents_removed": 1}
    assert stats["minhash"]["bands"] * stats["minhash"]["rows"] <= 128
    assert {"validate", "score", "exact_dedup", "minhash", "decontaminate", "write"} <= set(stats["timings_s"])
    # per step: scoring steps in worker seconds (summed over shards), global stages in wall seconds
    assert {"read", "normalize", "gopher", "gopher_rep", "c4", "fineweb", "quality", "write"} <= set(
        stats["score_seconds"])
    assert all(s["seconds"] > 0 for s in stats["stages"]), stats["stages"]
    assert stats["minhash"]["verify_threshold"] == 0.75 and stats["minhash"]["candidate_pairs"] >= 1
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "filter" and len(manifest["inputs"]) == 3
    assert not (out / "dedup").exists() and "bands x" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.light
def test_thresholds_change_without_rescoring(planted: dict, cluster: str, capsys: pytest.CaptureFixture) -> None:
    out = run(planted, cluster)
    scored = sorted(glob.glob(str(out / "scored" / "part-*.parquet")))
    stamps = [Path(p).stat().st_mtime_ns for p in scored]
    capsys.readouterr()

    run(planted, cluster)  # unchanged: nothing to do
    assert "up to date" in capsys.readouterr().out

    out = run(planted, cluster, "filter.quality.threshold=null", "filter.quality.keep_top=0.5")
    assert "already scored" in capsys.readouterr().out
    assert [Path(p).stat().st_mtime_ns for p in scored] == stamps  # scores reused, not recomputed
    stats = json.loads((out / "stats.json").read_text())
    quality = next(s for s in stats["stages"] if s["stage"] == "quality")
    pool = quality["docs_in"] - 3  # generated documents are scored but not thresholded by default
    assert quality["docs_removed"] == pytest.approx(pool / 2, abs=1)
    assert "quality:low_edu_score" in set(read_shards(out / "rejected").filter_reason)


@pytest.mark.slow
@pytest.mark.light
def test_a_changed_input_rescores_only_its_shards(planted: dict, cluster: str) -> None:
    out = run(planted, cluster)
    before = {p: p.stat().st_mtime_ns for p in (out / "scored").glob("part-*.parquet")}
    pd.DataFrame({"text": planted["docs"][30:38]}).to_parquet(planted["root"] / "more.parquet")
    out = run(planted, cluster)
    after = {p: p.stat().st_mtime_ns for p in (out / "scored").glob("part-*.parquet")}
    changed = [p.name for p in before if after.get(p) != before[p]]
    assert changed == ["part-00003.parquet"]  # web.jsonl is shards 0-2 (16 rows each), more.parquet is 3
    assert json.loads((out / "stats.json").read_text())["documents_in"] == 47


def light_config(tmp_path: Path, inputs: list[Path], *extra: str):
    """No edu model; the stages that need none."""
    return load_config(None, [f"run_dir={tmp_path / 'run'}", f"filter.input=[{', '.join(map(str, inputs))}]",
                              "filter.quality.enabled=false", "filter.include_generated=false", *extra])


def test_a_contaminated_copy_is_never_the_one_a_cluster_keeps(tmp_path: Path, cluster: str) -> None:
    # ~500 words (three documents, so 5-grams repeat: the repetition rule is off), so that the copy
    # with a GSM8K item pasted in is still a near-duplicate
    article = "\n\n".join(documents(3, seed=21))
    write_jsonl(tmp_path / "web.jsonl", [
        {"id": "clean", "text": article},
        {"id": "contaminated", "text": f"{article}\n\n{QUESTION}\n\n{ANSWER}"},  # longer: keep-best's pick
        {"id": "homework", "text": f"Homework: {QUESTION}"},  # too short for the heuristics
    ])
    write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": QUESTION, "answer": ANSWER}])
    cfg = light_config(tmp_path, [tmp_path / "web.jsonl"], "filter.heuristics.gopher_repetition.enabled=false",
                       f"filter.decontaminate.benchmarks=[{{name: gsm8k, path: {tmp_path / 'gsm8k.jsonl'}}}]")
    assert run_filter(cfg, scheduler=cluster) == 0
    out = tmp_path / "run" / "filtered"
    reason = dict(zip(*read_shards(out / "rejected")[["id", "filter_reason"]].to_numpy().T, strict=True))
    assert read_shards(out).id.tolist() == ["clean"]
    assert reason["contaminated"] == "decontam:gsm8k" and reason["homework"].startswith("gopher")
    # hits are counted in the input, also in a document an earlier stage removed
    stats = json.loads((out / "stats.json").read_text())
    assert stats["decontamination"]["gsm8k"] == {"items": 1, "items_indexed": 1, "documents_hit": 2,
                                                 "unique_items_hit": 1, "documents_removed": 1}
    assert [s["stage"] for s in stats["stages"]].index("decontaminate") < [
        s["stage"] for s in stats["stages"]].index("minhash")


def test_a_limit_that_leaves_documents_unread_is_reported(tmp_path: Path, cluster: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    docs = documents(10, seed=5)
    write_jsonl(tmp_path / "web.jsonl", [{"text": t} for t in docs])
    pd.DataFrame({"text": docs[:3]}).to_parquet(tmp_path / "small.parquet")
    cfg = light_config(tmp_path, [tmp_path / "web.jsonl", tmp_path / "small.parquet"], "filter.limit=4",
                       "filter.minhash.enabled=false")
    assert run_filter(cfg, scheduler=cluster) == 0
    captured = capsys.readouterr()
    assert f"filter: read 4 of 10 documents of {tmp_path / 'web.jsonl'}: filter.limit" in captured.out
    stats = json.loads((tmp_path / "run" / "filtered" / "stats.json").read_text())
    assert stats["limited"] == [{"path": str(tmp_path / "web.jsonl"), "read": 4, "documents": 10}]
    assert stats["documents_in"] == 4 + 3
    assert "\r" not in captured.err  # not a terminal: plain progress lines, no redrawn bar frames
