"""`textbook annotate` against a real local OpenAI-compatible server with canned rubric answers."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from pipeline.classify.annotate import parse_score, wave_ends
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import GenerateError
from pipeline.io import read_json, read_shards
from pipeline.lineage import content_digest
from pipeline.llm.run import run_requests
from pipeline.llm.spec import RunSpec
from pipeline.llm.stub_server import StubServer
from tests.classify.conftest import make_corpus

MALFORMED = [
    "Looks educational to me, maybe a four.",            # no score line
    "Educational score: 3.5",                             # not an integer
    "Educational score: 7",                               # out of range
    "Educational score: 4\nHope this helps!",             # score line is not the last line
    "Educational score: 2\nOn reflection:\nEducational score: 4",  # two score lines
    "",                                                   # empty answer
]


@pytest.mark.parametrize(("answer", "score"), [
    ("The extract defines terms and works an example.\nEducational score: 4", 4.0),
    ("Mostly ads.\n\nEducational score: 0\n", 0.0),
    ("Clear tutorial.\n**Educational score: 5**", 5.0),
    ("Some basics.\neducational score : 2.", 2.0),
    *[(bad, None) for bad in MALFORMED],
])
def test_parse_score_is_strict(answer, score):
    parsed = parse_score(answer)
    assert parsed["score"] == score
    assert (parsed["annotation_error"] is None) == (score is not None)


def canned_answers(corpus: pd.DataFrame) -> dict[str, str]:
    """Document → answer: lessons get 4, ads 1, and every seventh document a malformed answer."""
    answers = {}
    for i, (text, llm) in enumerate(zip(corpus["text"], corpus["score"], strict=True)):
        if i % 7 == 3:
            answers[text] = MALFORMED[(i // 7) % len(MALFORMED)]
        else:
            answers[text] = f"Justification for document {i}: it meets {llm} criteria.\nEducational score: {llm}"
    return answers


@pytest.mark.slow
def test_annotate_then_train_on_the_annotations(tmp_path, capsys):
    corpus = make_corpus(150, seed=21).drop_duplicates("text").reset_index(drop=True)
    web = tmp_path / "web.jsonl"
    rows = [{"url": f"https://example.org/{i}", "text": t} for i, t in enumerate(corpus["text"])]
    rows += [{"url": "empty", "text": ""}, {"url": "null", "text": None}]
    web.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = canned_answers(corpus)

    def responder(messages, params):
        document = re.search(r'"""\n(.*)\n"""', messages[-1]["content"], re.DOTALL).group(1)
        return answers[document]

    with StubServer(responder=responder, api_key="sk-test") as srv:
        args = ["annotate", f"run_dir={tmp_path / 'run'}", f"annotate.input=[{web}]", "annotate.num_documents=120",
                "annotate.max_chars=100000", f"generate.base_url={srv.base_url}", "generate.model=stub-model",
                "generate.api_key=sk-test", "generate.shard_size=50", "workers=1"]
        assert main(args) == 0
        sent = len(srv.requests)
        assert main(args) == 0  # same seed, same sample: everything resumes, nothing is asked again
        assert len(srv.requests) == sent == 120
        prompts = [r["messages"][-1]["content"] for r in srv.requests]

    assert all("Educational score: <an integer from 0 to 5>" in p for p in prompts)
    table = read_shards(tmp_path / "run" / "annotations")
    assert len(table) == 120 and table["id"].is_unique
    assert {"id", "text", "score", "justification", "answer", "annotation_error", "doc_id", "template_sha",
            "model", "finish_reason", "prompt_tokens", "completion_tokens"} <= set(table.columns)
    assert set(table["text"]) <= set(corpus["text"])  # the document, not the LLM's answer
    assert set(table["answer"]) <= set(answers.values()) and "document" not in table.columns
    for _, row in table.iterrows():
        if row["answer"] in MALFORMED:
            assert pd.isna(row["score"]) and row["annotation_error"]  # failed, never guessed
        else:
            truth = corpus.loc[corpus["text"] == row["text"], "score"].item()
            assert row["score"] == truth and pd.isna(row["annotation_error"])
            assert row["justification"].startswith("Justification for document")
    failed = int(table["score"].isna().sum())
    assert 0 < failed < 30
    manifest = read_json(tmp_path / "run" / "annotations" / "manifest.json")
    assert manifest["annotations"]["failed"] == failed
    assert manifest["annotations"]["scored"] == 120 - failed
    assert "sk-test" not in (tmp_path / "run" / "annotations" / "manifest.json").read_text()
    assert f"{failed} failed" in capsys.readouterr().out

    # The annotations are train-classifier's default input; failed rows are skipped, not guessed.
    assert main(["train-classifier", f"run_dir={tmp_path / 'run'}", "classifier.threads=1", "classifier.dim=32",
                 "classifier.bucket=100000", "classifier.min_auc=0", "classifier.accept_unreliable=true"]) == 0
    report = read_json(tmp_path / "run" / "classifier" / "report.json")
    assert report["counts"]["skipped"]["unlabelled"] == failed
    assert report["validation"]["spearman_vs_llm"] is not None


def test_dry_run_sends_nothing(tmp_path, capsys):
    web = tmp_path / "web.jsonl"
    web.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_corpus(10, seed=1)["text"]))
    with StubServer(api_key="sk-test") as srv:
        assert main(["annotate", "--dry-run", f"run_dir={tmp_path}", f"annotate.input=[{web}]",
                     f"generate.base_url={srv.base_url}", "generate.model=stub-model", "workers=1"]) == 0
        assert srv.requests == []
    out = capsys.readouterr().out
    assert "10 requests to send" in out and "Educational score:" in out
    assert not (tmp_path / "annotations").exists()


def test_a_sample_short_of_num_documents_says_why(tmp_path, capsys):
    web = tmp_path / "web.jsonl"
    texts = list(make_corpus(5, seed=1)["text"])
    web.write_text("".join(json.dumps({"text": t}) + "\n" for t in [*texts, texts[0], ""]))
    assert main(["annotate", "--dry-run", f"run_dir={tmp_path}", f"annotate.input=[{web}]",
                 "annotate.num_documents=6", "generate.model=stub-model"]) == 0
    out, err = capsys.readouterr()
    assert "5 requests to send" in out
    assert ("annotate: 5 of annotate.num_documents=6 documents: 1 drawn twice (the same id, or the same text "
            "without one) counted once") in err
    assert main(["annotate", "--dry-run", f"run_dir={tmp_path}", f"annotate.input=[{web}]",
                 "annotate.num_documents=10", "generate.model=stub-model"]) == 0
    assert "the inputs hold 6 non-empty (1 empty skipped)" in capsys.readouterr().err


def test_an_engine_column_never_overwrites_a_passthrough(tmp_path):
    requests = pd.DataFrame({"id": ["a"], "messages": [[{"role": "user", "content": "hi"}]], "answer": ["doc"]})
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    with pytest.raises(GenerateError, match="passthrough column 'answer' would be overwritten"):
        run_requests(RunSpec("annotate", tmp_path / "out", cfg.run_dir, cfg.generate, completion_column="answer"),
                     requests)
    assert not (tmp_path / "out").exists()


def test_unreachable_hub_dataset_is_one_line_naming_it(tmp_path, capsys):
    assert main(["annotate", f"run_dir={tmp_path}", "annotate.input=[some-org/web-pages-that-are-not-cached]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: some-org/web-pages-that-are-not-cached: cannot load Hugging Face dataset")
    assert not (tmp_path / "annotations").exists()


def test_missing_text_column_names_the_file(tmp_path, capsys):
    web = tmp_path / "web.jsonl"
    web.write_text(json.dumps({"body": "x"}) + "\n")
    assert main(["annotate", f"run_dir={tmp_path}", f"annotate.input=[{web}]"]) == 2
    err = capsys.readouterr().err
    assert str(web) in err and "missing column 'text'" in err


def test_wave_ends_probe_first_then_tenths_and_resume_where_shards_end():
    assert wave_ends(5000, 50) == [(0, 50)] + [(50 + 500 * i, min(5000, 550 + 500 * i)) for i in range(10)]
    assert wave_ends(30, 50) == [(0, 30)]  # fewer documents than the probe: one wave, judged whole
    assert wave_ends(1000, 50, resumed=300)[0] == (0, 300)  # every shard already written is in wave one


def web_file(path, n: int, seed: int):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_corpus(n, seed=seed)["text"]))
    return path


@pytest.mark.slow
def test_unparseable_answers_stop_the_run_early_and_exit_nonzero(tmp_path, capsys):
    web = web_file(tmp_path / "web.jsonl", 150, seed=5)
    run = tmp_path / "run"
    # the stub's default answers are prose with no "Educational score: N" line: every answer fails
    with StubServer(api_key="sk-test") as srv:
        args = ["annotate", f"run_dir={run}", f"annotate.input=[{web}]", "annotate.num_documents=120",
                "annotate.failure_min_answers=20", f"generate.base_url={srv.base_url}", "generate.model=stub-model",
                "generate.api_key=sk-test", "workers=1"]
        assert main(args) == 2
        assert len(srv.requests) == 20  # the probe only: the other 100 requests are never paid for
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: annotate.max_failure_share=0.5 exceeded: 20 of 20 answers (100%) in "
                              "documents 1-20 are unparseable (most often: no 'Educational score: N' line, 20x)")
        assert "stopped before sending the other 100 requests" in err and "--restart" in err
        manifest = read_json(run / "annotations" / "manifest.json")
        assert manifest["stop_reason"].startswith("annotate.max_failure_share=0.5 exceeded")
        assert manifest["annotations"]["failed"] == 20 and manifest["totals"]["complete"] is False

        # the classifier says what is wrong with its input, not "all 0 documents are negative"
        assert main(["train-classifier", f"run_dir={run}"]) == 2
        assert "all 20 annotations have no score" in capsys.readouterr().err

        # the gate is not part of the fingerprint: raising it resumes the same run where it stopped
        assert main([*args, "annotate.max_failure_share=1"]) == 0
        assert len(srv.requests) == 120
    assert len(read_shards(run / "annotations")) == 120


def test_annotate_resumes_only_on_the_inputs_it_was_built_from(tmp_path, capsys):
    web = web_file(tmp_path / "web.jsonl", 40, seed=3)
    run = tmp_path / "run"
    with StubServer(responder=lambda messages, params: "Clear.\nEducational score: 3", api_key="sk-test") as srv:
        args = ["annotate", f"run_dir={run}", f"annotate.input=[{web}]", "annotate.num_documents=30",
                f"generate.base_url={srv.base_url}", "generate.model=stub-model", "generate.api_key=sk-test",
                "workers=1"]
        assert main(args) == 0 and len(srv.requests) == 30
        manifest = read_json(run / "annotations" / "manifest.json")
        assert manifest["lineage"]["inputs"] == {str(web): content_digest(web)}
        assert manifest["lineage"]["config"]["generate"]["model"] == "stub-model"
        assert manifest["outputs"] == {f"annotations/{p.name}": content_digest(p)
                                       for p in sorted((run / "annotations").glob("part-*.parquet"))}
        capsys.readouterr()

        # a setting that shapes the prompts changed: the old answers do not describe this config
        assert main([*args, "annotate.max_chars=100"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == (f"error: {run / 'annotations'}: the annotation run was built from other inputs (config "
                       "annotate.max_chars was 6000, now 100); use a new run_dir, or rerun with --restart to "
                       "discard it")
        with web.open("a") as f:  # the input changed under the same name
            f.write(json.dumps({"text": "A new lesson about fractions and decimals."}) + "\n")
        assert main(args) == 2
        assert f"(input {web} changed)" in capsys.readouterr().err
        assert len(srv.requests) == 30  # nothing was asked on stale state

        assert main([*args, "--restart"]) == 0  # discards the old answers and asks again
        assert len(srv.requests) == 60
    assert read_json(run / "annotations" / "manifest.json")["lineage"]["inputs"] == {str(web): content_digest(web)}
    assert len(read_shards(run / "annotations")) == 30


@pytest.mark.slow
def test_after_the_failure_gate_restart_asks_every_document_again_and_records_what_it_discarded(tmp_path, capsys):
    """The gate's remedy may lie outside the fingerprint (a server fixed behind the same URL and model):
    --restart then discards every answer, not only those built from other inputs."""
    web = web_file(tmp_path / "web.jsonl", 40, seed=9)
    run = tmp_path / "run"
    common = ["annotate", f"run_dir={run}", f"annotate.input=[{web}]", "annotate.num_documents=30",
              "annotate.failure_min_answers=10", "generate.model=stub-model", "generate.api_key=sk-test", "workers=1"]
    with StubServer(api_key="sk-test") as broken:  # prose without a score line: every answer fails
        assert main([*common, f"generate.base_url={broken.base_url}"]) == 2
        assert len(broken.requests) == 10
    with StubServer(responder=lambda messages, params: "Clear.\nEducational score: 3", api_key="sk-test") as fixed:
        args = [*common, f"generate.base_url={fixed.base_url}"]
        assert main(args) == 0  # resumed: only the 20 missing documents are asked; the 10 failures stay
        assert len(fixed.requests) == 20
        assert read_json(run / "annotations" / "manifest.json")["annotations"]["failed"] == 10
        capsys.readouterr()
        assert main([*args, "--restart"]) == 0
        assert len(fixed.requests) == 20 + 30  # every document asked again
    assert "discarding 30 paid rows" in capsys.readouterr().err
    manifest = read_json(run / "annotations" / "manifest.json")
    assert manifest["annotations"]["failed"] == 0 and manifest["annotations"]["scored"] == 30
    assert [d["rows"] for d in manifest["discarded_runs"]] == [30]
