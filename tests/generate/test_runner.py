"""run_requests and generate on real Dask clusters against a real local server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.generate.conversation import parse_conversation
from pipeline.generate.journal import Journal
from pipeline.generate.plan import plan_requests
from pipeline.generate.runner import run_requests
from pipeline.generate.stub_server import StubServer
from pipeline.io import list_shards, read_json, read_shards

ROOT = Path(__file__).resolve().parents[2]


def requests_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"doc-{i:03d}" for i in range(n)],
        "messages": [[{"role": "user", "content": f"Rate document {i} for educational value."}] for i in range(n)],
        "url": [f"https://example.org/{i}" for i in range(n)],
    })


def config(srv: StubServer, tmp_path: Path, *overrides: str):
    return load_config(None, [f"run_dir={tmp_path / 'run'}", f"generate.base_url={srv.base_url}",
                              "generate.model=stub-model", "generate.api_key=sk-test",
                              "generate.retry_backoff_s=0.05", "workers=1", *overrides])


def test_run_requests_contract_postprocess_and_resume(tmp_path):
    """Passthrough + completion + postprocess columns; a rerun sends nothing and changes nothing."""
    def score(row: dict) -> dict:
        return {"words": len(row["text"].split()), "url_seen": row["url"].startswith("https://")}

    out = tmp_path / "annotations"
    with StubServer(faults=["429", "500"], api_key="sk-test") as srv:
        cfg = config(srv, tmp_path, "generate.shard_size=7", "generate.max_tokens=12",
                     "generate.price_input_per_million=2", "generate.price_output_per_million=10")
        first = run_requests(cfg, requests_frame(20), out, stage="annotate", postprocess=score)
        sent = len(srv.requests)
        second = run_requests(cfg, requests_frame(20), out, stage="annotate", postprocess=score)
        assert len(srv.requests) == sent  # resume: nothing requested again
    assert first.complete and first.new_rows == 20 and second.new_rows == 0
    assert len(srv.completed()) == 20 and sent == 22
    table = read_shards(out)
    assert len(list_shards(out)) == 3
    assert list(table["id"]) == [f"doc-{i:03d}" for i in range(20)]
    assert {"url", "text", "model", "temperature", "max_tokens", "finish_reason", "prompt_tokens",
            "completion_tokens", "latency_s", "flags", "words", "url_seen"} <= set(table.columns)
    assert "messages" not in table.columns
    assert (table["words"] == 12).all() and table["url_seen"].all()
    assert all(list(f) == ["truncated"] for f in table["flags"])
    manifest = read_json(out / "manifest.json")
    ledger = manifest["ledger"]
    assert ledger["prompt_tokens"] == table["prompt_tokens"].sum()
    assert ledger["completion_tokens"] == 20 * 12
    assert ledger["cost_usd"] == pytest.approx((ledger["prompt_tokens"] * 2 + 240 * 10) / 1e6)
    assert manifest["totals"]["rows"] == 20 and manifest["stage"] == "annotate"
    assert "sk-test" not in (out / "manifest.json").read_text()
    assert not (out / ".journal").exists()


def test_concurrency_holds_across_a_two_worker_cluster(tmp_path):
    with StubServer(latency_s=0.15, api_key="sk-test") as srv:
        cfg = config(srv, tmp_path, "workers=2", "generate.shard_size=6", "generate.concurrency=3")
        summary = run_requests(cfg, requests_frame(24), tmp_path / "out", stage="generate")
    assert summary.complete
    assert 2 <= srv.max_in_flight <= 3  # per-worker limits would let 6 through


def test_max_cost_stops_cleanly_and_keeps_what_was_paid_for(tmp_path):
    # every completion is 10 tokens at $1 each: $10 a request; the budget allows 5 requests
    with StubServer(latency_s=0.05, api_key="sk-test") as srv:
        cfg = config(srv, tmp_path, "generate.concurrency=2", "generate.shard_size=10", "generate.max_tokens=10",
                     "generate.price_output_per_million=1000000", "generate.max_cost_usd=45")
        summary = run_requests(cfg, requests_frame(30), tmp_path / "out", stage="generate")
        rows = read_shards(tmp_path / "out")
        assert "generate.max_cost_usd reached" in summary.stop_reason
        assert 5 <= len(rows) <= 6 and len(srv.completed()) == len(rows)
        assert read_json(tmp_path / "out" / "manifest.json")["stop_reason"] == summary.stop_reason
        # a higher budget resumes without asking for the paid rows again
        cfg = config(srv, tmp_path, "generate.concurrency=2", "generate.shard_size=10", "generate.max_tokens=10",
                     "generate.price_output_per_million=1000000", "generate.max_cost_usd=10000")
        again = run_requests(cfg, requests_frame(30), tmp_path / "out", stage="generate")
    assert again.complete and again.stop_reason is None
    prompts = [r["messages"][0]["content"] for r in srv.completed()]
    assert len(prompts) == len(set(prompts)) == 30


def test_generate_cli_end_to_end_with_diversity_report(tmp_path, capsys):
    with StubServer(api_key="sk-test") as srv:
        code = main(["generate", f"run_dir={tmp_path}", f"generate.base_url={srv.base_url}",
                     "generate.model=stub-model", "generate.api_key=sk-test", "generate.num_samples=25",
                     "generate.shard_size=10", "generate.max_tokens=40", "workers=1"])
    assert code == 0
    table = read_shards(tmp_path / "generated")
    assert len(table) == 25 and table["id"].is_unique
    for column in ["id", "text", "prompt", "template", "template_sha", "subject", "topic", "subtopic",
                   "audience", "style", "noun", "features", "model", "temperature", "max_tokens",
                   "finish_reason", "prompt_tokens", "completion_tokens", "latency_s", "flags"]:
        assert column in table.columns, column
    planned, _ = plan_requests(load_config(None, [f"run_dir={tmp_path}", "generate.model=stub-model",
                                                  "generate.num_samples=25", "generate.max_tokens=40"]))
    assert list(table["id"]) == list(planned["id"]) and list(table["prompt"]) == list(planned["prompt"])
    manifest = read_json(tmp_path / "generated" / "manifest.json")
    assert set(manifest["diversity"]) >= {"distinct_1", "distinct_2", "distinct_3", "top_opening_share",
                                          "near_duplicate_rate"}
    assert manifest["templates"]["story"]["requires"] == ["noun", "verb", "adjective", "features"]
    assert "sk-test" not in json.dumps(manifest)
    assert "diversity: distinct-1/2/3" in capsys.readouterr().out


def test_dry_run_prints_the_estimate_and_calls_nothing(tmp_path, capsys):
    with StubServer() as srv:
        code = main(["generate", f"run_dir={tmp_path}", f"generate.base_url={srv.base_url}",
                     "generate.num_samples=300", "generate.max_tokens=500",
                     "generate.price_input_per_million=1", "generate.price_output_per_million=4", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and srv.requests == []
    assert "300 requests to send" in out and "up to 150,000 completion tokens" in out
    assert "estimated cost <= $0.6" in out
    assert not (tmp_path / "generated").exists() or not list_shards(tmp_path / "generated")


@pytest.mark.parametrize(("overrides", "message"), [
    (["generate.templates={textbook: 1, lecture: 2}"], "config key 'generate.templates': unknown template 'lecture'"),
    (["generate.templates={textbook: 0}"], "config key 'generate.templates.textbook': weight must be positive"),
    (["generate.model=no-such-model"], "404 Not Found: unknown model 'no-such-model'"),
    (["generate.api_key=sk-wrong"], "401 Unauthorized: wrong API key"),
])
def test_bad_input_is_one_line_nonzero_and_writes_no_shard(tmp_path, capsys, overrides, message):
    with StubServer(api_key="sk-test") as srv:
        code = main(["generate", f"run_dir={tmp_path}", f"generate.base_url={srv.base_url}",
                     "generate.model=stub-model", "generate.api_key=sk-test", "generate.num_samples=6",
                     "workers=1", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not list_shards(tmp_path / "generated")


def test_sigkill_mid_run_then_rerun_gives_every_row_once(tmp_path):
    """Kill -9 while shards are half done; the rerun asks only for rows not yet on disk."""
    n = 30
    args = [sys.executable, "-m", "pipeline", "generate", f"run_dir={tmp_path}", "generate.model=stub-model",
            f"generate.num_samples={n}", "generate.shard_size=12", "generate.concurrency=3",
            "generate.max_tokens=20", "workers=1"]
    cfg = load_config(None, [f"run_dir={tmp_path}", "generate.model=stub-model", f"generate.num_samples={n}",
                             "generate.max_tokens=20"])
    planned, _ = plan_requests(cfg)
    prompt_of = dict(zip(planned["id"], planned["prompt"], strict=True))
    out = tmp_path / "generated"
    env = {**os.environ, "OPENAI_BASE_URL": "", "OPENAI_API_KEY": "sk-test"}
    with StubServer(latency_s=0.25, api_key="sk-test") as srv:
        env["OPENAI_BASE_URL"] = srv.base_url
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while len(_done_ids(out)) < 8:
                assert proc.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole run: CLI, scheduler, workers
            proc.wait()
        done_before = _done_ids(out)
        assert 8 <= len(done_before) < n
        while srv.in_flight:  # let the killed run's orphaned requests drain out of the log
            time.sleep(0.05)
        mark = len(srv.requests)
        rerun = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        asked_again = {m["messages"][0]["content"] for m in srv.requests[mark:]}
    table = read_shards(out)
    assert len(table) == n and table["id"].is_unique and set(table["id"]) == set(planned["id"])
    assert not asked_again & {prompt_of[i] for i in done_before}
    assert len(asked_again) == n - len(done_before)


def _done_ids(out: Path) -> set[str]:
    ids = set()
    for part in list_shards(out):
        ids |= set(pd.read_parquet(part, columns=["id"])["id"])
    for journal in (out / ".journal").glob("*.jsonl") if (out / ".journal").exists() else []:
        ids |= {r["id"] for r in Journal(journal).read()}
    return ids


def test_transformers_backend_in_process(tmp_path, tiny_llama):
    cfg = load_config(None, [f"run_dir={tmp_path}", "generate.backend=transformers", f"generate.model={tiny_llama}",
                             "generate.num_samples=5", "generate.max_tokens=6", "generate.batch_size=3",
                             "generate.templates={conversation: 1, story: 1}", "workers=1"])
    from pipeline.generate.runner import generate

    assert generate(cfg) == 0
    table = read_shards(tmp_path / "generated")
    assert len(table) == 5
    assert (table["completion_tokens"] <= 6).all() and (table["completion_tokens"] >= 1).all()
    assert set(table["finish_reason"]) <= {"stop", "length"}
    assert (table["prompt_tokens"] > 20).all()
    assert set(table["model"]) == {str(tiny_llama)}
    # parse_conversation is total: any text gives a (possibly empty) message list
    assert all(isinstance(parse_conversation(t), list) for t in table["text"])


def test_existing_scheduler_runs_and_resumes(tmp_path):
    """``scheduler=ADDRESS`` (``--scheduler``): the run uses that cluster and leaves it running."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster, \
            StubServer(api_key="sk-test") as srv, Client(cluster) as client:
        cfg = config(srv, tmp_path, f"scheduler={cluster.scheduler_address}", "generate.shard_size=4")
        first = run_requests(cfg, requests_frame(10), tmp_path / "out", stage="generate")
        second = run_requests(cfg, requests_frame(10), tmp_path / "out", stage="generate")
        assert len(client.scheduler_info()["workers"]) == 2
    assert first.complete and first.new_rows == 10 and second.new_rows == 0
    assert len(srv.completed()) == 10
