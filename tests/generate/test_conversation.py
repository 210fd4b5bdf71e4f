"""Conversations built turn by turn: one request per turn through the engine, roles by construction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.generate.conversation import parse_conversation, turn_by_turn
from pipeline.generate.plan import plan_requests
from pipeline.generate.render import PROMPTS_DIR
from pipeline.io import list_shards, read_json, read_shards
from pipeline.llm.journal import Journal, unanswered
from pipeline.llm.stub_server import StubServer

ROOT = Path(__file__).resolve().parents[2]


def turn_responder(messages: list[dict], params: dict) -> str:
    """A student turn for a student prompt, a teacher answer otherwise; neither in any turn format."""
    if messages[0]["role"] == "system":  # the teacher answers the conversation so far
        asked = sum(m["role"] == "user" for m in messages)
        return f"Answer {asked} about {messages[-1]['content'][:30]}"
    prompt = messages[-1]["content"]
    return f"Student: question {prompt.count('Teacher: ') + 1} on {prompt.split(' learning about ')[1][:20]}?"


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [f"run_dir={tmp_path}", "generate.model=stub-model", "generate.templates={conversation: 1}",
            "generate.max_tokens=50", *extra]


@pytest.mark.slow
def test_rows_alternate_roles_by_construction_and_the_ledger_counts_every_turn(tmp_path, scheduler):
    with StubServer(responder=turn_responder) as srv:
        code = main(["generate", *_args(tmp_path, f"generate.base_url={srv.base_url}", "generate.api_key=k",
                                        "generate.num_samples=6", "generate.shard_size=4",
                                        "generate.conversation.turns=3", f"scheduler={scheduler}")])
        answered = len(srv.completed())
        student_prompts = [r["messages"] for r in srv.completed() if r["messages"][0]["role"] == "user"]
    assert code == 0
    table = read_shards(tmp_path / "generated")
    assert len(table) == 6 and table["id"].is_unique
    for messages, text, requests in zip(table["messages"], table["text"], table["requests"], strict=True):
        messages = [dict(m) for m in messages]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3
        assert messages[0]["content"].startswith("question 1 on ")  # the speaker label is cleaned off
        assert messages[2]["content"].startswith("question 2 on ")  # the student saw the history
        assert messages[1]["content"].startswith("Answer 1 about question 1")
        assert messages[5]["content"].startswith("Answer 3 about question 3")
        assert parse_conversation(text) == messages  # text is the same conversation, for other stages
        assert requests == 6
    assert answered == 36 and len(student_prompts) == 18  # 6 rows x 3 exchanges x 2 turns: a request each
    ledger = read_json(tmp_path / "generated" / "manifest.json")["ledger"]
    assert ledger["requests"] == 36 and ledger["lost_requests"] == 0
    assert ledger["completion_tokens"] == table["completion_tokens"].sum()


def test_other_templates_keep_one_request_per_row(tmp_path, scheduler):
    with StubServer() as srv:
        code = main(["generate", *_args(tmp_path, f"generate.base_url={srv.base_url}", "generate.api_key=k",
                                        "generate.num_samples=12", "generate.templates={conversation: 1, story: 1}",
                                        f"scheduler={scheduler}")])
        answered = len(srv.completed())
    assert code == 0
    table = read_shards(tmp_path / "generated")
    chats = table[table["template"] == "conversation"]
    stories = table[table["template"] == "story"]
    assert len(chats) and len(stories)
    assert stories["messages"].isna().all() and stories["requests"].isna().all()
    assert answered == len(stories) + 4 * len(chats)  # default: 2 exchanges
    assert read_json(tmp_path / "generated" / "manifest.json")["ledger"]["requests"] == answered


def test_turn_template_sees_seeds_history_and_turn():
    turns = turn_by_turn(PROMPTS_DIR, "conversation", 2)
    row = {"template": "conversation", "subject": "Physics", "topic": "Optics", "subtopic": "refraction",
           "audience": "curious ten-year-olds", "prompt": "You are a teacher."}
    first = turns.request(row, [])
    assert [m["role"] for m in first] == ["user"] and "curious ten-year-olds" in first[0]["content"]
    history = [{"role": "user", "content": "Why does a straw look bent?"}]
    assert turns.request(row, history) == [{"role": "system", "content": "You are a teacher."}, *history]
    later = turns.request(row, [*history, {"role": "assistant", "content": "Light bends."}])[0]["content"]
    assert "Light bends." in later and "2 of 2" in later


def test_journaled_turns_are_answered_requests_not_lost_ones():
    events = [{"event": "sent", "request": "a", "id": "r", "prompt_tokens": 5},
              {"event": "turn", "request": "a", "id": "r", "turn": 0},
              {"event": "sent", "request": "b", "id": "r", "prompt_tokens": 7}]  # in flight at the kill
    assert [e["request"] for e in unanswered(events)] == ["b"]


@pytest.mark.slow
def test_kill_mid_conversations_then_rerun_gives_each_conversation_once_and_counts_every_paid_turn(
        tmp_path, scheduler):
    """SIGKILL while conversations are half built: the rerun continues each from its last journaled
    turn (no turn asked twice, unless it was in flight at the kill), and the ledger equals what the
    server answered."""
    n = 12
    args = [sys.executable, "-m", "pipeline", "generate", *_args(tmp_path, f"generate.num_samples={n}",
                                                                 "generate.shard_size=6", "generate.concurrency=3",
                                                                 "workers=1")]
    out = tmp_path / "generated"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    with StubServer(responder=turn_responder, latency_s=0.15) as srv:
        env["OPENAI_BASE_URL"] = srv.base_url
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while _turns_journaled(out) < 10 or srv.in_flight < 3:
                assert proc.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
                time.sleep(0.005)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert not list_shards(out) or len(read_shards(out)) < n
        while srv.in_flight:
            time.sleep(0.05)
        mark = len(srv.requests)
        rerun = subprocess.run([*args, f"scheduler={scheduler}"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        answered = len(srv.completed())
        resent = len(srv.requests) - mark
    table = read_shards(out)
    cfg = load_config(None, _args(tmp_path, f"generate.num_samples={n}"))
    planned, _ = plan_requests(cfg.generate, cfg.seed, cfg.run_dir)
    assert len(table) == n and set(table["id"]) == set(planned["id"])
    for messages in table["messages"]:
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    assert resent < 4 * n  # the rerun continued the conversations, not restarted them
    ledger = read_json(out / "manifest.json")["ledger"]
    assert answered >= 4 * n
    assert ledger["requests"] == answered and ledger["lost_requests"] == answered - 4 * n
    assert not (out / ".journal").exists()


def _turns_journaled(out: Path) -> int:
    if not (out / ".journal").exists():
        return 0
    return sum(sum(e.get("event") == "turn" for e in Journal(p).events()) for p in (out / ".journal").glob("*.jsonl"))


@pytest.mark.parametrize("turns", ["0"])
def test_turns_must_be_positive(tmp_path, capsys, turns):
    code = main(["generate", *_args(tmp_path, f"generate.conversation.turns={turns}", "--dry-run")])
    assert code == 2 and "generate.conversation.turns" in capsys.readouterr().err


def test_dry_run_counts_every_turn_of_every_conversation(tmp_path, capsys):
    code = main(["generate", *_args(tmp_path, "generate.num_samples=5", "generate.conversation.turns=3",
                                    "--dry-run")])
    assert code == 0
    assert "30 requests to send" in capsys.readouterr().out  # 5 conversations x 3 exchanges x 2 turns


def test_a_budget_stop_mid_conversation_keeps_its_paid_turns_for_the_rerun(tmp_path, scheduler):
    """A clean stop (generate.max_cost_usd) leaves conversations half built: their journaled turns
    stay, and a rerun with a higher budget finishes them without asking any turn again."""
    priced = ["generate.price_output_per_million=1000000", "generate.concurrency=2", "generate.shard_size=4"]
    with StubServer(responder=turn_responder) as srv:
        base = _args(tmp_path, f"generate.base_url={srv.base_url}", "generate.api_key=k",
                     "generate.num_samples=4", f"scheduler={scheduler}", *priced)
        assert main(["generate", *base, "generate.max_cost_usd=30"]) == 0  # a few turns, then the stop
        stopped = len(srv.completed())
        journaled = _turns_journaled(tmp_path / "generated")
        assert 0 < stopped < 16 and journaled == stopped  # every paid turn is still on disk
        assert main(["generate", *base, "generate.max_cost_usd=100000"]) == 0
        requests = [str(r["messages"]) for r in srv.completed()]
    assert len(requests) == 16 == len(set(requests))  # 4 conversations x 4 turns, none asked twice
    table = read_shards(tmp_path / "generated")
    assert len(table) == 4 and all(len(m) == 4 for m in table["messages"])
    ledger = read_json(tmp_path / "generated" / "manifest.json")["ledger"]
    assert ledger["requests"] == 16 and ledger["lost_requests"] == 0
