"""run_requests and generate on real Dask clusters against a real local server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.generate.diversity import GATE_MIN_ROWS
from pipeline.generate.plan import plan_requests
from pipeline.io import list_shards, read_json, read_shards
from pipeline.llm.backends import Sampling, TransformersBackend
from pipeline.llm.journal import Journal
from pipeline.llm.run import run_requests
from pipeline.llm.spec import RunSpec
from pipeline.llm.stub_server import StubServer, textbook_responder

ROOT = Path(__file__).resolve().parents[2]
# the default mix without conversations: one request a row (a conversation takes one per turn, see
# tests/generate/test_conversation.py)
NO_CONVERSATIONS = "generate.templates={textbook: 0.35, exercises: 0.2, story: 0.15, wikihow: 0.15}"


def requests_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"doc-{i:03d}" for i in range(n)],
        "messages": [[{"role": "user", "content": f"Rate document {i} for educational value."}] for i in range(n)],
        "url": [f"https://example.org/{i}" for i in range(n)],
    })


def config(srv: StubServer, tmp_path: Path, scheduler: str, *overrides: str):
    return load_config(None, [f"run_dir={tmp_path / 'run'}", f"generate.base_url={srv.base_url}",
                              "generate.model=stub-model", "generate.api_key=sk-test",
                              "generate.retry_backoff_s=0.05", f"scheduler={scheduler}", *overrides])


def run(cfg, requests: pd.DataFrame, out_dir: Path, stage: str, restart: bool = False, dry_run: bool = False,
        **spec):
    """``run_requests`` with the generate section and the shared keys of a root config."""
    return run_requests(RunSpec(stage, out_dir, cfg.run_dir, cfg.generate, seed=cfg.seed, scheduler=cfg.scheduler,
                                workers=cfg.workers, **spec), requests, restart=restart, dry_run=dry_run)


def test_run_requests_contract_postprocess_and_resume(tmp_path, scheduler):
    """Passthrough + completion + postprocess columns; a rerun sends nothing and changes nothing."""
    def score(row: dict) -> dict:
        return {"words": len(row["text"].split()), "url_seen": row["url"].startswith("https://")}

    out = tmp_path / "annotations"
    with StubServer(faults=["429", "500"], api_key="sk-test") as srv:
        cfg = config(srv, tmp_path, scheduler, "generate.shard_size=7", "generate.max_tokens=12",
                     "generate.price_input_per_million=2", "generate.price_output_per_million=10")
        first = run(cfg, requests_frame(20), out, stage="annotate", postprocess=score)
        sent = len(srv.requests)
        second = run(cfg, requests_frame(20), out, stage="annotate", postprocess=score)
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


@pytest.mark.slow
def test_concurrency_holds_across_a_two_worker_cluster(tmp_path, scheduler):
    with StubServer(latency_s=0.15, api_key="sk-test") as srv:
        cfg = config(srv, tmp_path, scheduler, "generate.shard_size=6", "generate.concurrency=3")
        summary = run(cfg, requests_frame(24), tmp_path / "out", stage="generate")
    assert summary.complete
    assert 2 <= srv.max_in_flight <= 3  # per-worker limits would let 6 through


@pytest.mark.slow
def test_workers_keep_their_connections_from_shard_to_shard(tmp_path, scheduler):
    """Each worker's client outlives its shards and runs: connections carry several shards' requests.

    Which worker takes which of the cluster's slots varies with load, so the test counts what a
    connection carried, not how many were opened.
    """
    with StubServer(api_key="sk-test", latency_s=0.02) as srv:
        cfg = config(srv, tmp_path, scheduler, "generate.shard_size=4", "generate.concurrency=2")
        first = run(cfg, requests_frame(32), tmp_path / "out", stage="generate")
        cfg = config(srv, tmp_path, scheduler, "generate.shard_size=4", "generate.concurrency=2")
        again = run(cfg, requests_frame(32).assign(id=lambda f: "again-" + f["id"]), tmp_path / "again",
                    stage="generate")
    assert first.complete and again.complete and len(srv.completed()) == 64
    carried: dict[int, set[tuple[int, int]]] = {}  # connection -> (run, shard) of its requests
    for n, request in enumerate(srv.completed()):  # in answer order: the first run's 32, then the second's
        row = int(request["messages"][0]["content"].split()[2])
        carried.setdefault(request["connection"], set()).add((n // 32, row // 4))
    assert len(carried) < 16  # a client per shard opens a connection per shard and slot
    assert max(len(shards) for shards in carried.values()) >= 2  # one connection served several shards


def test_max_cost_stops_cleanly_and_keeps_what_was_paid_for(tmp_path, scheduler):
    # every completion is 10 tokens at $1 each: $10 a request; the budget allows 5 requests
    with StubServer(latency_s=0.05, api_key="sk-test") as srv:
        cfg = config(srv, tmp_path, scheduler, "generate.concurrency=2", "generate.shard_size=10", "generate.max_tokens=10",
                     "generate.price_output_per_million=1000000", "generate.max_cost_usd=45")
        summary = run(cfg, requests_frame(30), tmp_path / "out", stage="generate")
        rows = read_shards(tmp_path / "out")
        assert "generate.max_cost_usd reached" in summary.stop_reason
        assert 5 <= len(rows) <= 6 and len(srv.completed()) == len(rows)
        assert read_json(tmp_path / "out" / "manifest.json")["stop_reason"] == summary.stop_reason
        # a higher budget resumes without asking for the paid rows again
        cfg = config(srv, tmp_path, scheduler, "generate.concurrency=2", "generate.shard_size=10", "generate.max_tokens=10",
                     "generate.price_output_per_million=1000000", "generate.max_cost_usd=10000")
        again = run(cfg, requests_frame(30), tmp_path / "out", stage="generate")
    assert again.complete and again.stop_reason is None
    prompts = [r["messages"][0]["content"] for r in srv.completed()]
    assert len(prompts) == len(set(prompts)) == 30


def test_generate_cli_end_to_end_with_diversity_report(tmp_path, capsys, scheduler):
    with StubServer(api_key="sk-test") as srv:
        code = main(["generate", f"run_dir={tmp_path}", f"generate.base_url={srv.base_url}",
                     "generate.model=stub-model", "generate.api_key=sk-test", "generate.num_samples=25",
                     "generate.shard_size=10", "generate.max_tokens=40", f"scheduler={scheduler}"])
    assert code == 0
    table = read_shards(tmp_path / "generated")
    assert len(table) == 25 and table["id"].is_unique
    for column in ["id", "text", "prompt", "template", "template_sha", "subject", "topic", "subtopic",
                   "audience", "style", "noun", "features", "model", "temperature", "max_tokens",
                   "finish_reason", "prompt_tokens", "completion_tokens", "latency_s", "flags"]:
        assert column in table.columns, column
    cfg = load_config(None, [f"run_dir={tmp_path}", "generate.model=stub-model", "generate.num_samples=25",
                             "generate.max_tokens=40"])
    planned, _ = plan_requests(cfg.generate, cfg.seed, cfg.run_dir)
    assert list(table["id"]) == list(planned["id"]) and list(table["prompt"]) == list(planned["prompt"])
    manifest = read_json(tmp_path / "generated" / "manifest.json")
    assert set(manifest["diversity"]) >= {"distinct_1", "distinct_2", "distinct_3", "top_opening_share",
                                          "near_duplicate_rate"}
    assert manifest["templates"]["story"]["requires"] == ["noun", "verb", "adjective", "features"]
    assert "sk-test" not in json.dumps(manifest)
    assert "diversity: distinct-1/2/3" in capsys.readouterr().out


def once_upon_a_time(messages: list[dict], params: dict) -> str:
    return "Once upon a time, " + textbook_responder(messages, params)


@pytest.mark.slow
def test_diversity_gate_warns_or_stops_the_run_early(tmp_path, capsys, scheduler):
    """TinyStories' collapse: every text opens alike. ``warn`` finishes and warns; ``fail`` stops early."""
    with StubServer(responder=once_upon_a_time, latency_s=0.05) as srv:
        args = ["generate", f"generate.base_url={srv.base_url}", "generate.model=stub-model", "generate.max_tokens=30",
                "generate.concurrency=4", f"scheduler={scheduler}", NO_CONVERSATIONS]
        warned = main([*args, f"run_dir={tmp_path / 'warn'}", "generate.num_samples=12"])
        err = capsys.readouterr().err
        failed = main([*args, f"run_dir={tmp_path / 'fail'}", "generate.num_samples=400", "generate.diversity_gate=fail"])
        out, err_fail = capsys.readouterr()
        sent = len(srv.completed())
    assert warned == 0 and "warning: opening 'once upon a' starts 100% of rows" in err
    assert read_json(tmp_path / "warn" / "generated" / "manifest.json")["diversity"]["gate"].startswith("opening")
    rows = read_shards(tmp_path / "fail" / "generated")
    assert failed == 1 and GATE_MIN_ROWS <= len(rows) < 200 and sent == 12 + len(rows)  # paid rows all kept
    manifest = read_json(tmp_path / "fail" / "generated" / "manifest.json")
    assert manifest["stop_reason"].startswith("diversity gate (generate.diversity_gate=fail): opening 'once upon a'")
    assert "stopped: diversity gate" in out and "error: opening 'once upon a'" in err_fail


def test_dry_run_prints_the_estimate_and_calls_nothing(tmp_path, capsys):
    with StubServer() as srv:
        code = main(["generate", f"run_dir={tmp_path}", f"generate.base_url={srv.base_url}",
                     "generate.num_samples=300", "generate.max_tokens=500", NO_CONVERSATIONS,
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
def test_bad_input_is_one_line_nonzero_and_writes_no_shard(tmp_path, capsys, scheduler, overrides, message):
    with StubServer(api_key="sk-test") as srv:
        code = main(["generate", f"run_dir={tmp_path}", f"generate.base_url={srv.base_url}",
                     "generate.model=stub-model", "generate.api_key=sk-test", "generate.num_samples=6",
                     f"scheduler={scheduler}", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not list_shards(tmp_path / "generated")


@pytest.mark.parametrize(("case", "message"), [
    ("malformed config", "bad.yaml:3:1: invalid YAML"),
    ("malformed seed", "styles.yaml:2:1: invalid YAML"),
    ("undeclared variable", "lesson.j2: uses variable 'audince' that its header does not declare"),
    ("unreachable server", "http://127.0.0.1:9/v1: giving up after 1 attempt (last: connection error ([Errno 111] Connect call failed"),
])
def test_bad_files_and_servers_are_one_line_nonzero_and_write_no_shard(tmp_path, capsys, scheduler, case, message):
    prompts = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts", prompts)
    args = ["generate", f"run_dir={tmp_path}", "generate.base_url=http://127.0.0.1:9/v1", "generate.max_retries=0",
            "generate.num_samples=4", f"generate.prompts_dir={prompts}", f"scheduler={scheduler}"]
    if case == "malformed config":
        (tmp_path / "bad.yaml").write_text("generate:\n  model: [unclosed\n")
        args[1:1] = ["-c", str(tmp_path / "bad.yaml")]
    elif case == "malformed seed":
        (prompts / "seeds" / "styles.yaml").write_text("styles: [unclosed\n")
    elif case == "undeclared variable":
        (prompts / "lesson.j2").write_text("{#- requires: [topic] -#}\nExplain {{ topic }} to {{ audince }}.\n")
        args.append("generate.templates={lesson: 1}")
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and message in err[-1], err[-1:]
    assert not (tmp_path / "generated").exists() or not list_shards(tmp_path / "generated")


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_every_row_once_and_the_ledger_counts_every_paid_request(
        tmp_path, scheduler):
    """Kill -9 while shards are half done and every slot has a request in flight (the run's own
    LocalCluster with it); the rerun asks only for rows not yet on disk (on the shared cluster,
    faster: concurrency is not part of the row key), and its ledger counts exactly the requests the
    server answered: the rows, plus those answered for the killed run after it died."""
    n = 30
    args = [sys.executable, "-m", "pipeline", "generate", f"run_dir={tmp_path}", "generate.model=stub-model",
            f"generate.num_samples={n}", "generate.shard_size=12", "generate.concurrency=3",
            "generate.max_tokens=20", "workers=1", NO_CONVERSATIONS]
    cfg = load_config(None, [f"run_dir={tmp_path}", "generate.model=stub-model", f"generate.num_samples={n}",
                             "generate.max_tokens=20", NO_CONVERSATIONS])
    planned, _ = plan_requests(cfg.generate, cfg.seed, cfg.run_dir)
    prompt_of = dict(zip(planned["id"], planned["prompt"], strict=True))
    out = tmp_path / "generated"
    env = {**os.environ, "OPENAI_BASE_URL": "", "OPENAI_API_KEY": "sk-test"}
    with StubServer(latency_s=0.25, api_key="sk-test") as srv:
        env["OPENAI_BASE_URL"] = srv.base_url
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            # all 3 slots mid-request: none is between journaling a request and sending it
            while len(_done_ids(out)) < 8 or srv.in_flight < 3:
                assert proc.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
                time.sleep(0.005)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole run: CLI, scheduler, workers
            proc.wait()
        done_before = _done_ids(out)
        assert 8 <= len(done_before) < n
        while srv.in_flight:  # let the killed run's orphaned requests drain out of the log
            time.sleep(0.05)
        mark = len(srv.requests)
        rerun = subprocess.run([*args, f"scheduler={scheduler}", "generate.concurrency=12"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        asked_again = {m["messages"][0]["content"] for m in srv.requests[mark:]}
        answered = len(srv.completed())
    table = read_shards(out)
    assert len(table) == n and table["id"].is_unique and set(table["id"]) == set(planned["id"])
    assert not asked_again & {prompt_of[i] for i in done_before}
    assert len(asked_again) == n - len(done_before)
    ledger = read_json(out / "manifest.json")["ledger"]
    assert answered > n  # the killed run's in-flight requests were answered (and billed) after it died
    assert ledger["requests"] == answered and ledger["lost_requests"] == answered - n
    assert ledger["prompt_tokens"] > table["prompt_tokens"].sum()  # the lost ones' prompts, estimated
    assert f"{answered} requests (incl. {answered - n} lost in flight" in rerun.stdout


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_mid_run_says_one_line_and_the_rerun_resumes(tmp_path, workers):
    """Ctrl-C reaches the whole process group (driver and worker processes): what the user reads is
    the progress so far and one line saying what was kept, not the teardown of loops and actors."""
    n = 40
    args = [sys.executable, "-m", "pipeline", "generate", f"run_dir={tmp_path}", "generate.model=stub-model",
            f"generate.num_samples={n}", "generate.concurrency=4", "generate.max_tokens=20", f"workers={workers}",
            NO_CONVERSATIONS]
    with StubServer(latency_s=1.0, api_key="sk-test") as srv:
        env = {**os.environ, "OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": "sk-test"}
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        deadline = time.monotonic() + 120
        while len(srv.requests) < 4 or srv.in_flight < 4:  # answers written, requests in flight
            assert proc.poll() is None and time.monotonic() < deadline, "run ended before it could be interrupted"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130
        lines = [line for line in err.splitlines() if not line.startswith("generate: ")]  # the progress lines
        assert lines == ["interrupted: every answered request is kept (journaled as it arrived); rerun the same "
                         "command to resume"], err[-3000:]
        srv.latency_s = 0.0
        rerun = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    table = read_shards(tmp_path / "generated")
    assert len(table) == n and table["id"].is_unique


def _done_ids(out: Path) -> set[str]:
    ids = set()
    for part in list_shards(out):
        ids |= set(pd.read_parquet(part, columns=["id"])["id"])
    for journal in (out / ".journal").glob("*.jsonl") if (out / ".journal").exists() else []:
        ids |= {r["id"] for r in Journal(journal).read()}
    return ids


@pytest.mark.slow
def test_transformers_backend_on_the_cluster(tmp_path, tiny_llama, scheduler):
    """The in-process backend as a Dask task: batched generation from a local model path."""
    from pipeline.generate.runner import generate

    cfg = load_config(None, [f"run_dir={tmp_path}", "generate.backend=transformers", f"generate.model={tiny_llama}",
                             "generate.num_samples=5", "generate.max_tokens=6", "generate.batch_size=3",
                             "generate.templates={conversation: 1, story: 1}", f"scheduler={scheduler}"])
    assert generate(cfg) == 0
    table = read_shards(tmp_path / "generated")
    assert len(table) == 5
    per_request = table["completion_tokens"] / table["requests"].fillna(1)  # a conversation: 4 requests
    assert (per_request <= 6).all() and (table["completion_tokens"] >= 1).all()
    assert set(table["finish_reason"]) <= {"stop", "length"}
    assert (table["prompt_tokens"] > 20).all()
    assert set(table["model"]) == {str(tiny_llama)}


def test_transformers_sampling_is_seeded(tiny_llama):
    """temperature 0.8: the same batch seed gives the same texts, another seed other texts."""
    gen = load_config(None, ["generate.max_tokens=8", "generate.temperature=0.8"]).generate
    backend = TransformersBackend(str(tiny_llama), "cpu")
    batch = [[{"role": "user", "content": f"Tell a story about a {w}."}] for w in ("fox", "bee", "owl")]
    first, again, other = (asyncio.run(backend.complete(batch, Sampling.of(gen), seed)) for seed in (7, 7, 8))
    assert [c.text for c in first] == [c.text for c in again]
    assert [c.text for c in first] != [c.text for c in other]


def test_existing_scheduler_runs_and_resumes(tmp_path, scheduler):
    """``scheduler=ADDRESS`` (``--scheduler``): the run uses that cluster and leaves it running."""
    from distributed import Client

    with StubServer(api_key="sk-test") as srv:
        cfg = config(srv, tmp_path, scheduler, "generate.shard_size=4")
        first = run(cfg, requests_frame(10), tmp_path / "out", stage="generate")
        second = run(cfg, requests_frame(10), tmp_path / "out", stage="generate")
    with Client(scheduler) as client:
        assert len(client.scheduler_info()["workers"]) == 2
    assert first.complete and first.new_rows == 10 and second.new_rows == 0
    assert len(srv.completed()) == 10


def test_one_worker_keeps_requests_in_flight_across_shard_boundaries(tmp_path):
    """The next shard's first request leaves while the last one of the shard before is in flight:
    concurrency does not drain to zero at a shard boundary (one in-process worker, as a run with
    ``workers=1`` gets), and each shard still lands in its own part, in request order.

    The server keeps each shard's last answer back until the next shard's first request arrives (a
    run that drained shard by shard would make it wait out the 120 s valve), so load cannot decide.
    """
    n, size = 48, 8
    seen: set[int] = set()
    waited: list[int] = []

    async def hold_last_of_each_shard(body: dict) -> None:
        row = int(body["messages"][0]["content"].split()[2])
        seen.add(row // size)
        if row % size == size - 1 and row // size + 1 < n // size:
            valve = time.monotonic() + 120
            while row // size + 1 not in seen:
                if time.monotonic() > valve:
                    waited.append(row // size)
                    return
                await asyncio.sleep(0.01)

    with StubServer(api_key="sk-test", hold=hold_last_of_each_shard) as srv:
        cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"generate.base_url={srv.base_url}",
                                 "generate.model=stub-model", "generate.api_key=sk-test", "workers=1",
                                 f"generate.shard_size={size}", "generate.concurrency=6"])
        summary = run(cfg, requests_frame(n), tmp_path / "out", stage="generate")
        log = srv.completed()
    assert summary.complete and len(log) == n
    assert not waited, f"shards {waited} drained before the next one started"
    parts = list_shards(tmp_path / "out")
    assert len(parts) == n // size
    for k, part in enumerate(parts):
        assert list(pd.read_parquet(part)["id"]) == [f"doc-{i:03d}" for i in range(k * size, (k + 1) * size)]
    assert not (tmp_path / "out" / ".journal").exists()


@pytest.mark.slow
def test_a_rate_limit_that_binds_says_so_once(tmp_path, capsys):
    """requests_per_minute below what the server could do: the run says which limit holds it back, once;
    a limit that never makes a request wait says nothing. The slow limit (one request per 5 s, all
    three asked for at once) binds however busy the machine is."""
    with StubServer(latency_s=0.01, api_key="sk-test") as srv:
        base = [f"generate.base_url={srv.base_url}", "generate.model=stub-model", "generate.api_key=sk-test",
                "workers=1", "generate.concurrency=8"]
        slow = load_config(None, [f"run_dir={tmp_path / 'slow'}", *base, "generate.requests_per_minute=12"])
        first = run(slow, requests_frame(3), tmp_path / "slow", stage="generate")
        err_slow = capsys.readouterr().err
        fast = load_config(None, [f"run_dir={tmp_path / 'fast'}", *base, "generate.requests_per_minute=1000000"])
        second = run(fast, requests_frame(30), tmp_path / "fast", stage="generate")
        err_fast = capsys.readouterr().err
    assert first.complete and second.complete
    line = "generate: the rate limit generate.requests_per_minute=12 (0.2 requests/s) is what holds this run back"
    assert err_slow.count(line) == 1
    assert "rate limit" not in err_fast
    assert "limited_by" not in read_json(tmp_path / "slow" / "manifest.json")["ledger"]


class _Words:
    """A postprocess that names the one column it reads."""

    reads = ("text",)

    def __call__(self, row: dict) -> dict:
        assert set(row) == {"text"}, sorted(row)  # handed only what it reads
        return {"words": len(row["text"].split())}


def test_a_postprocess_that_names_its_columns_gets_only_those_and_the_rest_keep_their_types(tmp_path):
    with StubServer(api_key="sk-test") as srv:
        cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"generate.base_url={srv.base_url}",
                                 "generate.model=stub-model", "generate.api_key=sk-test", "workers=1",
                                 "generate.shard_size=4", "generate.max_tokens=7"])
        summary = run(cfg, requests_frame(10).assign(rank=range(10)), tmp_path / "out", stage="annotate",
                      postprocess=_Words())
    table = read_shards(tmp_path / "out")
    assert summary.complete and (table["words"] == 7).all()
    assert table["rank"].tolist() == list(range(10)) and str(table["rank"].dtype) == "int64"


def test_max_cost_stops_cleanly_on_the_runs_only_worker(tmp_path):
    """The in-process worker tells the coordinator only when its spend could reach the budget, and
    still starts no request once the budget is spent: $10 a request, $45 allowed, 2 in flight."""
    with StubServer(latency_s=0.05, api_key="sk-test") as srv:
        cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"generate.base_url={srv.base_url}",
                                 "generate.model=stub-model", "generate.api_key=sk-test", "workers=1",
                                 "generate.concurrency=2", "generate.shard_size=10", "generate.max_tokens=10",
                                 "generate.price_output_per_million=1000000", "generate.max_cost_usd=45"])
        summary = run(cfg, requests_frame(30), tmp_path / "out", stage="generate")
        rows = read_shards(tmp_path / "out")
        assert "generate.max_cost_usd reached" in summary.stop_reason
        assert 5 <= len(rows) <= 6 and len(srv.completed()) == len(rows)
