"""The filter report's stages come from the filters: no reason a filter declares lands in "other"."""

from __future__ import annotations

from filters.decontaminate import Decontaminate
from pipeline.filter.dedup import DEDUP_REASONS
from pipeline.filter.documents import document_filter_types
from pipeline.filter.report import FILTER_STAGES, stage_of, stage_table


def test_stages_are_in_data_flow_order() -> None:
    assert FILTER_STAGES == ("normalize", "language", "heuristics", "quality", "decontaminate", "exact_dedup",
                             "minhash")


def test_every_declared_reason_maps_to_its_filters_stage() -> None:
    for cls in [*document_filter_types(), Decontaminate]:
        for reason in cls.reasons:
            assert stage_of(reason.replace("*", "x")) == cls.stage in FILTER_STAGES, reason
    for reason, stage in DEDUP_REASONS.items():
        assert stage_of(reason) == stage
    assert stage_of("gopher_rep:top_2gram") == "heuristics" and stage_of("decontam:gsm8k+mmlu") == "decontaminate"
    assert stage_of("mystery:rule") == "other"


def test_stage_table_counts_each_reason_under_its_stage() -> None:
    rows = stage_table(10, 1000, {"length:empty": [1, 0], "near_dup": [2, 200], "gopher:stop_words": [3, 300]})
    assert [r["stage"] for r in rows] == list(FILTER_STAGES)
    removed = {r["stage"]: r["docs_removed"] for r in rows}
    assert removed == {"normalize": 1, "language": 0, "heuristics": 3, "quality": 0, "decontaminate": 0, "exact_dedup": 0,
                       "minhash": 2}
    assert rows[-1]["docs_out"] == 4


def test_the_rephrase_second_pass_reasons_count_under_quality() -> None:
    from pipeline.filter.report import stage_of

    assert stage_of("rephrase:unfaithful") == stage_of("rephrase:below_route_keep") == "quality"
