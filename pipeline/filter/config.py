"""The `filter` section: inputs and one sub-section per stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.settings import Section


class StageConfig(Section):
    enabled: bool = True


class QualityConfig(StageConfig):
    model: str | None = None
    threshold: float | None = None
    keep_top: float | None = Field(default=None, gt=0, le=1)


class MinHashConfig(StageConfig):
    threshold: float = Field(default=0.8, gt=0, lt=1)


class BenchmarkConfig(Section):
    name: str
    path: str
    columns: list[str]


class DecontaminateConfig(StageConfig):
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)


class FilterConfig(Section):
    input: list[str] = Field(default_factory=list)
    text_column: str = "text"
    id_column: str = "id"
    on_bad_file: Literal["fail", "skip"] = "fail"
    heuristics: StageConfig = StageConfig()
    quality: QualityConfig = QualityConfig()
    exact_dedup: StageConfig = StageConfig()
    minhash: MinHashConfig = MinHashConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
