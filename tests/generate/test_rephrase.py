"""Rephrasing web text by quality route: chunking, routing, recycle, lineage columns, faithfulness."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.generate.config import RouteConfig
from pipeline.generate.plan import plan_lineage, plan_requests
from pipeline.generate.rephrase import (
    Document,
    chunk_text,
    estimate_tokens,
    faithfulness,
    route_of,
)
from pipeline.io import read_shards, write_parquet
from pipeline.llm.stub_server import StubServer, textbook_responder

ROUTES = ('[{name: low, when: [{column: edu_score, op: "<", value: 0.3}], templates: {rephrase_wikipedia: 1}}, '
          '{name: mid, when: [{column: edu_score, op: ">=", value: 0.3}, {column: edu_score, op: "<", value: 0.7}], '
          'templates: {rephrase_faq: 1, rephrase_tutorial: 1}}, '
          '{name: high, when: [{column: edu_score, op: ">=", value: 0.7}], '
          'templates: {rephrase_qa: 1, rephrase_knowledge_list: 1, rephrase_math: 1}}, '
          '{name: recycle, origin: rejected, templates: {rephrase_wikipedia: 1}}]')


def _paragraph(i: int, words: int = 60) -> str:
    return " ".join(f"tide{i}word{j}" for j in range(words)) + "."


def _web(path: Path, n: int = 12, paragraphs: int = 1) -> Path:
    rows = [{"id": f"doc{i}", "text": "\n\n".join(_paragraph(i * 10 + p) for p in range(paragraphs)),
             "edu_score": round(i / n, 3)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(None, [f"run_dir={tmp_path / 'run'}", "generate.num_samples=0",
                              f"generate.rephrase.routes={ROUTES}", *overrides])


def test_chunks_split_on_paragraphs_to_the_token_budget():
    paras = [_paragraph(i, 40) for i in range(6)]  # ~600 chars each
    chunks = chunk_text("\n\n".join(paras), chunk_tokens=320)  # ~1280 chars: two paragraphs a chunk
    assert chunks == ["\n\n".join(paras[k:k + 2]) for k in (0, 2, 4)]
    assert all(estimate_tokens(c) <= 320 for c in chunks)
    long = " ".join(["word"] * 2000)  # one paragraph over the budget is cut at words
    parts = chunk_text(long, chunk_tokens=100)
    assert len(parts) > 1 and all(len(p) <= 400 for p in parts) and " ".join(parts) == long


def test_documents_without_the_score_the_routes_test_say_why_nothing_is_planned(tmp_path, capsys):
    web = tmp_path / "unscored.parquet"
    write_parquet(pd.DataFrame({"id": ["a", "b"], "text": [_paragraph(1), _paragraph(2)]}), web)
    args = ["generate", "--dry-run", f"run_dir={tmp_path / 'run'}", "generate.num_samples=0",
            f"generate.rephrase.input=[{web}]"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"2 of 2 documents of {web} take no route: 2 have no 'edu_score' to route by" in err
    assert "score them first" in err and "route by origin alone" in err
    by_origin = "generate.rephrase.routes=[{name: all, templates: {rephrase_wikipedia: 1}}]"
    assert main([*args, by_origin]) == 0
    assert "2 rows, 0 already written, 2 requests to send" in capsys.readouterr().out

    half = tmp_path / "half.jsonl"  # some scored, some not: the rest are planned, the skip is said
    half.write_text(json.dumps({"id": "s", "text": _paragraph(3), "edu_score": 0.9}) + "\n"
                    + json.dumps({"id": "u", "text": _paragraph(4)}) + "\n")
    assert main([*args[:-1], f"generate.rephrase.input=[{half}]"]) == 0
    out, err = capsys.readouterr()
    assert "1 rows, 0 already written" in out and "1 of 2 documents" in err and "1 have no 'edu_score'" in err


def test_routing_by_bucket_with_lineage_columns_and_stable_ids(tmp_path):
    web = _web(tmp_path / "web.jsonl", n=12, paragraphs=3)
    cfg = _cfg(tmp_path, f"generate.rephrase.input=[{web}]", "generate.rephrase.chunk_tokens=200")
    rows, templates = plan_requests(cfg.generate, cfg.seed, cfg.run_dir)
    expected = {f"doc{i}": "low" if i / 12 < 0.3 else "mid" if i / 12 < 0.7 else "high" for i in range(12)}
    assert dict(zip(rows["source_id"], rows["route"], strict=True)) == expected
    allowed = {"low": {"rephrase_wikipedia"}, "mid": {"rephrase_faq", "rephrase_tutorial"},
               "high": {"rephrase_qa", "rephrase_knowledge_list", "rephrase_math"}}
    assert all(t in allowed[r] for t, r in zip(rows["template"], rows["route"], strict=True))
    assert set(rows.loc[rows["route"] == "high", "template"]) == allowed["high"]
    # three ~720-char paragraphs at a ~800-char budget: one chunk each, in order, with its text rendered
    assert sorted(rows.loc[rows["source_id"] == "doc0", "chunk"]) == [0, 1, 2]
    for _, row in rows.iterrows():
        assert row["document"] in row["prompt"] and row["template_sha"] == templates[row["template"]].sha
        assert row["source_edu_score"] == pytest.approx(int(row["source_id"][3:]) / 12, abs=1e-3)
    math_rows = rows[rows["template"] == "rephrase_math"]
    assert math_rows["difficulty"].notna().all()  # the math family owns its difficulty variable
    # the same documents in another order plan the same rows under the same ids
    lines = web.read_text().splitlines()
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(reversed(lines)) + "\n")
    reordered = _cfg(tmp_path, f"generate.rephrase.input=[{shuffled}]", "generate.rephrase.chunk_tokens=200")
    again, _ = plan_requests(reordered.generate, reordered.seed, reordered.run_dir)
    assert set(again["id"]) == set(rows["id"]) and rows["id"].is_unique
    # a changed source document changes the lineage fingerprint (a resume is refused)
    before = plan_lineage(cfg.generate, cfg.seed, cfg.run_dir, templates)
    web.write_text(web.read_text().replace("tide0word1 ", "tide0word1 changed "))
    assert plan_lineage(cfg.generate, cfg.seed, cfg.run_dir, templates) != before


def test_recycle_route_takes_the_rejected_documents_but_never_benchmark_hits_or_duplicates(tmp_path):
    run = tmp_path / "run"
    kept = pd.DataFrame({"id": ["k1", "k2", "g1"], "text": [_paragraph(1), _paragraph(2), _paragraph(3)],
                         "source": ["web", "web", "generated"], "edu_score": [0.9, 0.1, 0.9]})
    rejected = pd.DataFrame({"id": ["r1", "r2", "r3", "r4"], "text": [_paragraph(i) for i in (4, 5, 6, 7)],
                             "source": ["web"] * 4, "edu_score": [0.05, 0.2, 0.9, 0.1],
                             "filter_reason": ["quality", "gopher_quality:mean_word_length", "decontam:gsm8k",
                                               "near_dup"]})
    write_parquet(kept, run / "filtered" / "part-00000.parquet")
    write_parquet(rejected, run / "filtered" / "rejected" / "part-00000.parquet")
    cfg = _cfg(tmp_path, "generate.rephrase.input=[filtered, rejected]")
    rows, _ = plan_requests(cfg.generate, cfg.seed, cfg.run_dir)
    routes = dict(zip(rows["source_id"], rows["route"], strict=True))
    assert routes == {"k1": "high", "k2": "low", "r1": "recycle", "r2": "recycle"}
    assert set(rows.loc[rows["route"] == "recycle", "template"]) == {"rephrase_wikipedia"}


def test_first_matching_route_wins_and_missing_scores_match_no_comparison():
    routes = [RouteConfig(name="a", when=[{"column": "edu_score", "op": ">", "value": 0.5}], templates={"x": 1}),
              RouteConfig(name="b", templates={"x": 1})]
    assert route_of(Document("1", "t", "kept", {"edu_score": 0.9}), routes).name == "a"
    assert route_of(Document("1", "t", "kept", {}), routes).name == "b"
    assert route_of(Document("1", "t", "kept", {"edu_score": float("nan")}), routes[:1]) is None
    assert route_of(Document("1", "t", "rejected", {"edu_score": 0.9}), routes) is None


def test_faithfulness_is_the_share_of_source_content_words_kept():
    source = "The Moon's gravity pulls the oceans, causing tides twice daily."
    assert faithfulness(source, source) == 1.0
    assert faithfulness(source, "Cats sleep a lot.") == 0.0
    half = faithfulness(source, "Gravity from the Moon makes oceans rise.")
    assert 0.3 < half < 0.8


def echo_wikipedia(messages: list[dict], params: dict) -> str:
    """Faithful rewrites for the Wikipedia family (the document echoed), unrelated prose for the others."""
    prompt = messages[-1]["content"]
    if "Wikipedia" in prompt:
        return "In summary: " + prompt.split('"""')[1]
    return textbook_responder(messages, params)


def test_generate_rephrases_end_to_end_with_lineage_faithfulness_and_resume(tmp_path, scheduler, capsys):
    web = _web(tmp_path / "web.jsonl", n=10, paragraphs=2)
    args = ["generate", f"run_dir={tmp_path / 'run'}", "generate.model=stub-model", "generate.api_key=sk-test",
            "generate.num_samples=4", "generate.shard_size=7", "generate.max_tokens=60", f"scheduler={scheduler}",
            f"generate.rephrase.routes={ROUTES}", f"generate.rephrase.input=[{web}]",
            "generate.rephrase.min_faithfulness=0.5", "generate.diversity_gate=warn"]
    with StubServer(responder=echo_wikipedia, api_key="sk-test") as srv:
        assert main([*args, f"generate.base_url={srv.base_url}"]) == 0
        table = read_shards(tmp_path / "run" / "generated")
        cfg = load_config(None, [a for a in args[1:] if not a.startswith("scheduler")])
        planned, _ = plan_requests(cfg.generate, cfg.seed, cfg.run_dir)
        assert list(table["id"]) == list(planned["id"])
        rephrased = table[table["route"].notna()]
        plain = table[table["route"].isna()]
        assert len(plain) == 4 and plain["faithfulness"].isna().all()
        assert len(rephrased) == len(planned) - 4 and len(rephrased) >= 10
        for column in ["source_id", "chunk", "route", "template", "template_sha", "source_edu_score", "document",
                       "faithfulness", "flags", "prompt_tokens", "completion_tokens"]:
            assert rephrased[column].notna().all(), column
        wiki = rephrased["template"] == "rephrase_wikipedia"
        assert wiki.any() and (~wiki).any()
        assert (rephrased.loc[wiki, "faithfulness"] == 1.0).all()
        assert (rephrased.loc[~wiki, "faithfulness"] < 0.5).all()
        assert all("unfaithful" in list(f) for f in rephrased.loc[~wiki, "flags"])
        assert not any("unfaithful" in list(f) for f in rephrased.loc[wiki, "flags"])
        assert "difficulty" in table.columns
        sent = len(srv.completed())
        assert main([*args, f"generate.base_url={srv.base_url}"]) == 0  # resume: nothing new
        assert len(srv.completed()) == sent
        web.write_text(web.read_text().replace("tide0word1 ", "tide0word1 edited "))
        capsys.readouterr()
        assert main([*args, f"generate.base_url={srv.base_url}"]) != 0  # a changed source stops a resume
        assert "web.jsonl" in capsys.readouterr().err
        assert len(srv.completed()) == sent


def test_a_rewrite_that_says_nothing_is_flagged_whatever_the_minimum(tmp_path, scheduler):
    """A real small model wrote lone '\"\"\"' rewrites: flagged unfaithful even with min_faithfulness off."""
    def stubs_for_qa(messages: list[dict], params: dict) -> str:
        prompt = messages[-1]["content"]
        return '"""' if "question" in prompt.lower() and "Wikipedia" not in prompt else echo_wikipedia(messages, params)

    web = _web(tmp_path / "web.jsonl", n=10, paragraphs=1)
    with StubServer(responder=stubs_for_qa, api_key="sk-test") as srv:
        assert main(["generate", f"run_dir={tmp_path / 'run'}", "generate.model=stub-model", "generate.api_key=sk-test",
                     "generate.num_samples=0", f"scheduler={scheduler}", f"generate.rephrase.routes={ROUTES}",
                     f"generate.rephrase.input=[{web}]", "generate.diversity_gate=warn",
                     f"generate.base_url={srv.base_url}"]) == 0
    table = read_shards(tmp_path / "run" / "generated")
    empty = table["text"] == '"""'
    assert empty.any() and (~empty).any()
    assert all("unfaithful" in list(f) for f in table.loc[empty, "flags"])
    assert not any("unfaithful" in list(f) for f in table.loc[table["template"] == "rephrase_wikipedia", "flags"])


def test_rephrased_rows_are_a_train_source_of_their_own_and_not_synthetic(tmp_path):
    from pipeline.sources import read_source

    run = tmp_path / "run"
    write_parquet(pd.DataFrame({"id": ["t", "c", "r1", "r2"], "text": ["a textbook", "a chat", "a rewrite", "qa"],
                                "template": ["textbook", "conversation", "rephrase_wikipedia", "rephrase_qa"]}),
                  run / "generated" / "part-00000.parquet")
    sources = load_config(None, [f"run_dir={run}"]).train.sources
    assert list(read_source("rephrased", sources["rephrased"], run)["id"]) == ["r1", "r2"]
    assert list(read_source("synthetic", sources["synthetic"], run)["id"]) == ["t"]
