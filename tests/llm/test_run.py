"""The run skeleton's own contract: waves judged one by one, one manifest for the whole run, the
caller's manifest fields, and a rerun that adds nothing leaving the manifest as it was."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import load_config
from pipeline.io import read_json, read_shards
from pipeline.llm.run import run_requests
from pipeline.llm.spec import RunSpec
from pipeline.llm.stub_server import StubServer


def requests_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"row-{i:02d}" for i in range(n)],
                         "messages": [[{"role": "user", "content": f"Lesson {i}."}] for i in range(n)]})


class StopAfter:
    """Waves of four requests; stops the run after the wave that ends at ``end`` (None: never)."""

    def __init__(self, end: int | None) -> None:
        self.end = end
        self.judged: list[tuple[int, int, int]] = []

    def waves(self, total: int, resumed: int) -> list[tuple[int, int]]:
        ends = [max(4, resumed), *range(max(4, resumed) + 4, total + 4, 4)]
        ends = [min(e, total) for e in ends]
        return list(zip([0, *ends[:-1]], ends, strict=True))

    def judge(self, out_dir: Path, requests: pd.DataFrame, start: int, end: int) -> str | None:
        self.judged.append((start, end, len(read_shards(out_dir))))
        return f"judged enough at {end}" if end == self.end else None


def spec(tmp_path: Path, srv: StubServer, gate: StopAfter, **fields) -> RunSpec:
    cfg = load_config(None, [f"run_dir={tmp_path}", f"generate.base_url={srv.base_url}", "generate.model=stub-model",
                             "generate.api_key=sk-test", "generate.shard_size=3", "workers=1"])
    return RunSpec("label", tmp_path / "out", tmp_path, cfg.generate, workers=1, waves=gate,
                   lineage={"config": {"rubric": 1}, "inputs": {}, "parents": {}}, **fields)


def test_waves_are_judged_before_the_next_is_sent_and_the_manifest_describes_the_whole_run(tmp_path):
    gate = StopAfter(8)
    with StubServer(api_key="sk-test") as srv:
        first = run_requests(spec(tmp_path, srv, gate, manifest_fields={"rubric": "v1"},
                                  describe=lambda s, previous: {"rows_seen": len(read_shards(s.out_dir))}),
                             requests_frame(12))
        assert len(srv.requests) == 8  # the third wave is never paid for
        # each wave is judged on disk, its rows written before the judge reads them
        assert gate.judged == [(0, 4, 4), (4, 8, 8)]
        manifest = read_json(tmp_path / "out" / "manifest.json")
        assert manifest["totals"] == {**manifest["totals"], "requests": 12, "rows": 8, "new_rows": 8,
                                      "complete": False}
        assert manifest["stop_reason"] == first.stop_reason == "judged enough at 8"
        assert manifest["rubric"] == "v1" and manifest["rows_seen"] == first.described["rows_seen"] == 8
        assert manifest["lineage"] == {"config": {"rubric": 1}, "inputs": {}, "parents": {}}

        # the rerun's first wave takes every shard on disk; it sends only what is missing
        gate = StopAfter(None)
        second = run_requests(spec(tmp_path, srv, gate), requests_frame(12))
        assert len(srv.requests) == 12 and second.new_rows == 4 and second.complete
        assert gate.judged[0][:2] == (0, 9)  # shards of 3: the third one (rows 6-8) was written
        assert len(read_shards(tmp_path / "out")) == 12

        written = (tmp_path / "out" / "manifest.json").read_bytes()
        third = run_requests(spec(tmp_path, srv, StopAfter(None)), requests_frame(12))
        assert third.new_rows == 0 and len(srv.requests) == 12
    assert (tmp_path / "out" / "manifest.json").read_bytes() == written  # nothing new: not rewritten
