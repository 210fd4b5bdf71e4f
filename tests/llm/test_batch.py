"""generate.mode=batch against the project's server's Batch API (real HTTP on 127.0.0.1, no mocks)."""

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
from pipeline.io import list_shards, read_json, read_shards
from pipeline.llm.run import run_requests
from pipeline.llm.spec import RunSpec
from pipeline.llm.stub_server import StubServer
from pipeline.rundir import BATCHES_FILE

ROOT = Path(__file__).resolve().parents[2]


def requests_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"doc-{i:03d}" for i in range(n)],
        "messages": [[{"role": "user", "content": f"Write a lesson about topic number {i}."}] for i in range(n)],
        "url": [f"https://example.org/{i}" for i in range(n)],
    })


def batch_config(srv: StubServer, tmp_path: Path, *overrides: str):
    return load_config(None, [f"run_dir={tmp_path / 'run'}", f"generate.base_url={srv.base_url}",
                              "generate.model=stub-model", "generate.api_key=sk-test", "generate.mode=batch",
                              "generate.batch_poll_s=0.05", "generate.retry_backoff_s=0.05", *overrides])


def run(cfg, requests: pd.DataFrame, out: Path, restart: bool = False, dry_run: bool = False, **spec):
    return run_requests(RunSpec("generate", out, cfg.run_dir, cfg.generate, seed=cfg.seed, **spec), requests,
                        restart=restart, dry_run=dry_run)


def batch_ids(srv: StubServer) -> list[list[str]]:
    """The row ids of each batch the server was asked to create, in order."""
    return [[line["custom_id"] for line in b["_lines"]] for b in srv.batches.values()]


@pytest.mark.slow
def test_batch_mode_gives_the_same_rows_and_columns_as_online_at_half_the_price(tmp_path, scheduler):
    common = ["generate.model=stub-model", "generate.api_key=sk-test", "generate.num_samples=12",
              "generate.shard_size=5", "generate.max_tokens=40", "generate.price_input_per_million=2",
              "generate.price_output_per_million=10", f"scheduler={scheduler}"]
    with StubServer(api_key="sk-test", batch_delay_s=0.3) as srv:
        assert main(["generate", f"run_dir={tmp_path / 'online'}", f"generate.base_url={srv.base_url}", *common]) == 0
        online_requests = len(srv.requests)
        assert main(["generate", f"run_dir={tmp_path / 'batch'}", f"generate.base_url={srv.base_url}", *common,
                     "generate.mode=batch", "generate.batch_poll_s=0.05"]) == 0
        assert len(srv.requests) == online_requests  # batch mode sent no online request
        sent = batch_ids(srv)
        statuses = {b["status"] for b in srv.batches.values()}
    assert statuses == {"completed"}
    online, batch = read_shards(tmp_path / "online" / "generated"), read_shards(tmp_path / "batch" / "generated")
    # every plain row in the first batch; a conversation (built turn by turn) takes one round per turn
    turns = int(online["requests"].max())
    assert (online["template"] == "conversation").any() and turns >= 2
    assert len(sent) == turns and sum(map(len, sent)) == online_requests == len(online) + (online["requests"] - 1).sum()
    assert sorted(i for i in sent[0] if "@turn" not in i) == sorted(online.loc[online["template"] != "conversation", "id"])
    assert [p.name for p in list_shards(tmp_path / "batch" / "generated")] == \
        [p.name for p in list_shards(tmp_path / "online" / "generated")]
    assert list(batch.columns) == list(online.columns)
    assert dict(batch.dtypes) == dict(online.dtypes)
    pd.testing.assert_frame_equal(batch.drop(columns="latency_s"), online.drop(columns="latency_s"))
    led_online = read_json(tmp_path / "online" / "generated" / "manifest.json")["ledger"]
    manifest = read_json(tmp_path / "batch" / "generated" / "manifest.json")
    led_batch = manifest["ledger"]
    assert led_batch["requests"] == led_online["requests"] == online_requests
    assert led_batch["prompt_tokens"] == led_online["prompt_tokens"] == batch["prompt_tokens"].sum()
    assert led_batch["completion_tokens"] == led_online["completion_tokens"]
    assert led_batch["cost_usd"] == pytest.approx(led_online["cost_usd"] / 2)
    assert led_batch["price_input_per_million"] == 1 and led_batch["price_output_per_million"] == 5
    assert manifest["batch"]["batches"] == turns and manifest["batch"]["in_flight"] == 0
    assert not (tmp_path / "batch" / "generated" / ".journal").exists()


@pytest.mark.slow
def test_sigkill_after_submit_then_rerun_polls_the_same_batch_and_submits_nothing(tmp_path):
    n = 9
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "pipeline", "generate", f"run_dir={run_dir}", "generate.model=stub-model",
            f"generate.num_samples={n}", "generate.shard_size=4", "generate.max_tokens=20", "generate.mode=batch",
            "generate.batch_poll_s=0.05", "generate.templates={textbook: 1, story: 1}"]
    out = run_dir / "generated"
    with StubServer(api_key="sk-test", batch_delay_s=4.0) as srv:
        env = {**os.environ, "OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": "sk-test"}
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            # submitted and being polled, nothing downloaded yet
            while not (srv.batches and _recorded_batch(out)):
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "never submitted"
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert not list_shards(out) and len(srv.batches) == 1
        assert next(iter(srv.batches.values()))["status"] in ("validating", "in_progress")
        code = main([*args[3:], f"generate.base_url={srv.base_url}", "generate.api_key=sk-test"])
        assert code == 0
        assert len(srv.batches) == 1  # the rerun polled the killed run's batch: nothing submitted again
    table = read_shards(out)
    assert len(table) == n and table["id"].is_unique
    assert read_json(out / "manifest.json")["ledger"]["requests"] == n


def _recorded_batch(out: Path) -> bool:
    path = out / BATCHES_FILE
    try:
        return any(b["batch_id"] for b in json.loads(path.read_text())["batches"])
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def test_no_wait_then_a_batch_id_lost_to_a_kill_is_found_by_its_file_not_submitted_again(tmp_path):
    """batch_wait=false returns after submitting; a record left without its batch id (a kill between
    create and record) is matched to the server's batch by input file on the rerun."""
    out = tmp_path / "out"
    with StubServer(api_key="sk-test", batch_delay_s=0.5) as srv:
        first = run(batch_config(srv, tmp_path, "generate.batch_wait=false"), requests_frame(6), out)
        assert not first.complete and first.rows == 0
        assert first.stop_reason == ("1 batch submitted and not finished (generate.batch_wait=false): rerun to "
                                     "collect them")
        book = json.loads((out / BATCHES_FILE).read_text())
        assert len(book["batches"]) == 1 and book["batches"][0]["batch_id"] == "batch_000001"
        book["batches"][0]["batch_id"] = None  # what a kill right after batches.create leaves
        (out / BATCHES_FILE).write_text(json.dumps(book))
        again = run(batch_config(srv, tmp_path), requests_frame(6), out)
        assert len(srv.batches) == 1
    assert again.complete and again.new_rows == 6
    assert json.loads((out / BATCHES_FILE).read_text())["batches"][0]["batch_id"] == "batch_000001"


def test_partial_failure_resubmits_only_the_failed_rows(tmp_path):
    out = tmp_path / "out"
    with StubServer(api_key="sk-test", batch_errors={"doc-002", "doc-007"}) as srv:
        summary = run(batch_config(srv, tmp_path, "generate.shard_size=4"), requests_frame(10), out)
        sent = batch_ids(srv)
    assert summary.complete and summary.new_rows == 10
    assert len(sent) == 2 and len(sent[0]) == 10 and sorted(sent[1]) == ["doc-002", "doc-007"]
    table = read_shards(out)
    assert list(table["id"]) == [f"doc-{i:03d}" for i in range(10)]
    assert (table["url"] == [f"https://example.org/{i}" for i in range(10)]).all()
    assert summary.ledger["requests"] == 10  # error lines are not billed
    book = json.loads((out / BATCHES_FILE).read_text())
    assert book["batches"][0]["failed"] == ["doc-002", "doc-007"] and book["batches"][1]["failed"] == []


def test_expiry_resubmits_the_unfinished_rows(tmp_path):
    out = tmp_path / "out"
    with StubServer(api_key="sk-test", batch_expiry=[3]) as srv:
        summary = run(batch_config(srv, tmp_path), requests_frame(8), out)
        sent = batch_ids(srv)
        statuses = [b["status"] for b in srv.batches.values()]
    assert statuses == ["expired", "completed"]
    assert sent[1] == [f"doc-{i:03d}" for i in range(3, 8)]  # the three answered before expiry are kept
    assert summary.complete and len(read_shards(out)) == 8


def test_rows_that_keep_failing_stop_after_max_retries_rounds(tmp_path, capsys):
    out = tmp_path / "out"
    with StubServer(api_key="sk-test", batch_expiry=[0, 0, 0]) as srv:
        with pytest.raises(Exception, match="doc-000 unanswered after 3 batch attempts \\(last: batch_expired"):
            run(batch_config(srv, tmp_path, "generate.max_retries=2"), requests_frame(4), out)
        assert len(srv.batches) == 3


def test_ledger_and_dry_run_estimate_use_batch_prices(tmp_path, capsys):
    args = [f"run_dir={tmp_path}", "generate.num_samples=300", "generate.max_tokens=500",
            "generate.price_input_per_million=1", "generate.price_output_per_million=4", "--dry-run"]
    with StubServer() as srv:
        assert main(["generate", f"generate.base_url={srv.base_url}", *args]) == 0
        online = capsys.readouterr().out
        assert main(["generate", f"generate.base_url={srv.base_url}", "generate.mode=batch", *args]) == 0
        batch = capsys.readouterr().out
        assert srv.requests == [] and srv.batches == {} and srv.files == {}
    cost = [float(text.split("estimated cost <= $")[1].split()[0]) for text in (online, batch)]
    assert cost[1] == pytest.approx(cost[0] / 2, abs=1e-4)
    assert "batch mode: prices are 50% of online" in batch

    out = tmp_path / "out"
    with StubServer(api_key="sk-test") as srv:
        summary = run(batch_config(srv, tmp_path, "generate.price_input_per_million=3",
                                   "generate.price_output_per_million=12", "generate.batch_discount=0.25"),
                      requests_frame(5), out)
    table = read_shards(out)
    led = summary.ledger
    assert led["requests"] == 5
    assert led["cost_usd"] == pytest.approx(
        (table["prompt_tokens"].sum() * 3 + table["completion_tokens"].sum() * 12) * 0.25 / 1e6, abs=1e-6)


def test_conversations_go_one_round_per_turn_and_resume_from_the_last_collected_turn(tmp_path, scheduler):
    """With batch_wait=false each run collects what finished and submits the next turn: the
    conversation continues across runs from its journaled turns, and ends as online mode's does."""
    common = ["generate.model=stub-model", "generate.api_key=sk-test", "generate.num_samples=3",
              "generate.templates={conversation: 1}", "generate.conversation.turns=2", "generate.max_tokens=30",
              f"scheduler={scheduler}"]
    with StubServer(api_key="sk-test") as srv:
        assert main(["generate", f"run_dir={tmp_path / 'online'}", f"generate.base_url={srv.base_url}", *common]) == 0
        batch_args = ["generate", f"run_dir={tmp_path / 'batch'}", f"generate.base_url={srv.base_url}", *common,
                      "generate.mode=batch", "generate.batch_wait=false"]
        runs = 0
        while not list_shards(tmp_path / "batch" / "generated") or \
                len(read_shards(tmp_path / "batch" / "generated")) < 3:
            assert main(batch_args) == 0
            runs += 1
            assert runs <= 6
        sent = batch_ids(srv)
    assert runs == 5  # submit turn 0; then collect turn k and submit turn k+1; the last run collects turn 3
    assert [sorted(int(c.split("@turn")[1]) for c in ids) for ids in sent] == [[k] * 3 for k in range(4)]
    online, batch = read_shards(tmp_path / "online" / "generated"), read_shards(tmp_path / "batch" / "generated")
    assert list(batch["messages"].map(lambda m: [t["role"] for t in m])) == [["user", "assistant"] * 2] * 3
    pd.testing.assert_frame_equal(batch.drop(columns="latency_s"), online.drop(columns="latency_s"))
    assert read_json(tmp_path / "batch" / "generated" / "manifest.json")["ledger"]["requests"] == 12
    assert not (tmp_path / "batch" / "generated" / ".journal").exists()


def test_batches_in_flight_from_another_config_stop_a_rerun_unless_restart(tmp_path, capsys):
    args = [f"run_dir={tmp_path}", "generate.model=stub-model", "generate.api_key=sk-test", "generate.num_samples=4",
            "generate.templates={textbook: 1}", "generate.mode=batch", "generate.batch_poll_s=0.05"]
    with StubServer(api_key="sk-test", batch_delay_s=0.2) as srv:
        url = f"generate.base_url={srv.base_url}"
        assert main(["generate", url, *args, "generate.batch_wait=false"]) == 0
        assert len(srv.batches) == 1 and not list_shards(tmp_path / "generated")
        assert main(["generate", url, *args, "generate.max_tokens=64"]) != 0
        assert "its 1 batch submitted (1 not collected)" in capsys.readouterr().err and len(srv.batches) == 1
        assert main(["generate", url, *args, "generate.max_tokens=64", "--restart"]) == 0
        assert len(srv.batches) == 2
    assert "forgetting 1 batch of another plan" in capsys.readouterr().err
    table = read_shards(tmp_path / "generated")
    assert len(table) == 4 and (table["max_tokens"] == 64).all()
