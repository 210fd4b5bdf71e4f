"""The pure parts of a run: cost ledger, token buckets, the coordinator's budget, the journal, diversity."""

from __future__ import annotations

import pytest

from pipeline.generate.diversity import (
    GATE_MIN_ROWS,
    OpeningGate,
    distinct_n,
    diversity_report,
    near_duplicate_rate,
    opening,
    opening_share,
    words_keeping_contractions,
)
from pipeline.llm.journal import Journal
from pipeline.llm.ledger import Ledger
from pipeline.llm.limits import Coordinator, TokenBucket


def test_ledger_prices_tokens_per_million():
    ledger = Ledger(price_input_per_million=0.15, price_output_per_million=0.60, max_cost_usd=1.0)
    ledger.add(1_000_000, 500_000)
    assert ledger.cost_usd == pytest.approx(0.15 + 0.30)
    assert not ledger.over_budget
    ledger.add(0, 1_000_000)
    assert ledger.over_budget and ledger.as_dict()["cost_usd"] == pytest.approx(1.05)


def test_coordinator_reports_the_stop_reason_once_the_budget_is_spent():
    coordinator = Coordinator(Ledger(0, 1_000_000, max_cost_usd=25))
    assert coordinator.record(5, 10) is None
    assert coordinator.record(5, 10) is None
    assert "generate.max_cost_usd reached: spent $30.0000 of $25.0000" in coordinator.record(5, 10)
    assert coordinator.snapshot()["requests"] == 3


def test_coordinator_starts_stopped_when_earlier_rows_spent_the_budget():
    assert Coordinator(Ledger(0, 1_000_000, max_cost_usd=5, completion_tokens=6)).stop() is not None


def test_coordinator_opening_gate_stops_only_after_enough_rows_share_one_opening():
    coordinator = Coordinator(Ledger(0, 0), gate=OpeningGate(0.5))
    varied = [f"Topic {i} opens here." for i in range(GATE_MIN_ROWS)]
    assert coordinator.record(0, 0, 10, ["once upon a"] * 10) is None  # 100%, but too few rows to judge
    assert coordinator.record(0, 0, GATE_MIN_ROWS, [opening(t) for t in varied]) is None  # 10 of 60
    assert coordinator.record(0, 0, 40, ["once upon a"] * 40) is None  # 50 of 100: not over the share
    reason = coordinator.record(0, 0, 1, [opening("Once upon a time, a fox...")])
    assert reason == ("diversity gate (generate.diversity_gate=fail): opening 'once upon a' starts 51 of "
                      "101 rows (50.5%), over generate.diversity_max_opening_share=0.5")
    assert Coordinator(Ledger(0, 0)).record(0, 0, 100, ["once upon a"] * 100) is None  # gate off


def test_token_bucket_spaces_requests_at_the_configured_rate():
    bucket = TokenBucket(per_minute=120, burst=1)  # 2 per second
    bucket.stamp = 100.0
    waits = [bucket.reserve(1, now=100.0) for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert bucket.reserve(1, now=103.0) == pytest.approx(0.0)


def test_tokens_per_minute_waits_in_proportion_to_request_size():
    coordinator = Coordinator(Ledger(), tokens_per_minute=6000)  # 100 tokens per second
    coordinator.tokens.stamp = 0.0
    first = coordinator.reserve(100)
    second = coordinator.reserve(300)
    assert first == pytest.approx(0.0, abs=0.05) and second == pytest.approx(3.0, abs=0.1)


def test_journal_survives_a_line_torn_by_a_kill(tmp_path):
    path = tmp_path / "part-00000.jsonl"
    journal = Journal(path)
    journal.append({"id": "a", "text": "one"})
    journal.append({"id": "b", "text": "two"})
    journal.close()
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "c", "te')  # the kill happened mid-write
    assert [r["id"] for r in Journal(path).read()] == ["a", "b"]
    reopened = Journal(path)
    reopened.append({"id": "d", "text": "four"})
    reopened.close()
    assert [r["id"] for r in Journal(path).read()] == ["a", "b", "d"]


def test_diversity_measures_collapse_of_openings_and_duplicates():
    stories = [f"Once upon a time there was a {animal} who liked to {verb} in the {place}."
               for animal, verb, place in [("cat", "run", "park"), ("dog", "swim", "lake"), ("bird", "sing", "tree"),
                                           ("fox", "hide", "forest")]]
    varied = ["Tides follow the Moon.", "Bees dance to share food.", "Prime numbers have two divisors.",
              "Rust protects iron badly."]
    tokenized = [words_keeping_contractions(t) for t in stories]
    assert opening_share(tokenized) == ("once upon a", 1.0)
    assert opening_share([words_keeping_contractions(t) for t in varied])[1] == 0.25
    assert distinct_n([words_keeping_contractions(t) for t in varied], 1) == 1.0
    assert distinct_n(tokenized, 3) < distinct_n([words_keeping_contractions(t) for t in varied], 3)
    long = " ".join(f"word{i}" for i in range(60))
    assert near_duplicate_rate([long, long + " end", varied[0] * 3]) == pytest.approx(2 / 3)
    assert near_duplicate_rate([f"{long} {i} " + " ".join(f"tail{i}x{j}" for j in range(60)) for i in range(9)]) == 0
    assert near_duplicate_rate([varied[1], long, long.upper(), varied[2], long + "!"]) == pytest.approx(3 / 5)
    report = diversity_report(stories + varied)
    assert report["texts"] == 8 and report["top_opening_share"] == 0.5
