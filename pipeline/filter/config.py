"""The `filter` section: inputs and one sub-section per stage.

The per-document filters (length, the four heuristics) are the filter classes themselves, so
their published defaults live in one place (``filters/``) and every parameter is a config key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from filters.heuristics import C4Lines, FineWebQuality, GopherQuality, GopherRepetition
from filters.language import LanguageFilter
from filters.normalize import LengthBounds
from pipeline.settings import Section


class StageConfig(Section):
    enabled: bool = True


class HeuristicsConfig(StageConfig):
    apply_to_generated: bool = False
    """Web-text rules misjudge markdown textbooks (headings, bullets, code); scores are kept either way."""
    gopher_quality: GopherQuality = GopherQuality()
    gopher_repetition: GopherRepetition = GopherRepetition()
    c4: C4Lines = C4Lines()
    fineweb: FineWebQuality = FineWebQuality()


class QualityConfig(StageConfig):
    # A command-line value for one of these drops the config file's value for the other.
    exclusive_keys: ClassVar[tuple[tuple[str, ...], ...]] = (("threshold", "keep_top"),)

    model: str | None = None
    """fastText model path; default RUN_DIR/classifier/edu_fasttext.bin."""
    threshold: float | None = None
    """Keep documents with edu_score >= threshold (default 0.5 when keep_top is not set)."""
    keep_top: float | None = Field(default=None, gt=0, le=1)
    """Keep this fraction of (web) documents with the highest edu_score: a global percentile."""
    apply_to_generated: bool = False
    """Generated textbooks are scored but not thresholded unless this is true."""
    keep_top_per_route: dict[str, float] = Field(default_factory=dict)
    """Second pass over rephrased rows (REWIRE): route -> fraction of that route's rewrites to keep, by edu_score (e.g. {recycle: 0.1})."""
    reject_unfaithful: bool = True
    """Reject generated rows flagged ``unfaithful`` (generate.rephrase.min_faithfulness) as ``rephrase:unfaithful``."""

    @model_validator(mode="after")
    def _route_fractions(self) -> QualityConfig:
        bad = {k: v for k, v in self.keep_top_per_route.items() if not 0 < v <= 1}
        if bad:
            raise ValueError(f"keep_top_per_route: each fraction must be in (0, 1] (got {bad})")
        return self

    @model_validator(mode="after")
    def _one_threshold(self) -> QualityConfig:
        if self.threshold is not None and self.keep_top is not None:
            raise ValueError("set either threshold (absolute edu_score) or keep_top (a fraction), not both: "
                             "add filter.quality.keep_top=null or filter.quality.threshold=null")
        return self


class MinHashConfig(StageConfig):
    threshold: float = Field(default=0.8, gt=0, lt=1)
    num_perm: int = Field(default=128, ge=16)
    ngram: int = Field(default=5, ge=1, le=8)
    """Word n-gram length of the shingles."""
    seed: int = 0
    bands: int | None = Field(default=None, ge=1)
    """LSH bands x rows; derived from threshold and num_perm when not set (both or neither)."""
    rows: int | None = Field(default=None, ge=1)
    verify: bool = True
    """Confirm LSH candidate pairs by the exact Jaccard of their shingle sets before clustering."""
    verify_threshold: float | None = Field(default=None, ge=0, le=1)
    """Jaccard a verified pair needs (default: threshold)."""
    max_cluster: int = Field(default=1000, ge=2)
    """Clusters of more members than this keep their best member only (no Jaccard with kept members: each removed member is linked to it by a chain of verified pairs); smaller ones are resolved best first against every kept member. Bounds what one task holds: the shingles of this many documents."""

    @model_validator(mode="after")
    def _bands_with_rows(self) -> MinHashConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither (then they are derived from threshold)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


@dataclass(frozen=True)
class Preset:
    """Where a named benchmark lives on the Hub and which of its columns a contaminated document reproduces."""

    path: str
    columns: list[str]
    subset: str | None = None
    split: str = "test"


# The evaluation splits of the benchmarks small models report, with the text columns that a
# contaminated document would reproduce (question and answer/solution, not labels).
PRESETS: dict[str, Preset] = {
    "gsm8k": Preset("openai/gsm8k", ["question", "answer"], subset="main"),
    "mmlu": Preset("cais/mmlu", ["question", "choices"], subset="all"),
    "humaneval": Preset("openai/openai_humaneval", ["prompt", "canonical_solution"]),
    "arc": Preset("allenai/ai2_arc", ["question", "choices"], subset="ARC-Challenge"),
    "arc_easy": Preset("allenai/ai2_arc", ["question", "choices"], subset="ARC-Easy"),
    "hellaswag": Preset("Rowan/hellaswag", ["ctx", "endings"], split="validation"),
}


class BenchmarkConfig(Section):
    """One benchmark set: a preset name (gsm8k, mmlu, humaneval, arc, arc_easy, hellaswag) fills the rest."""

    name: str
    path: str | None = None
    """Local JSONL(.gz)/Parquet/CSV path or glob, or a Hugging Face dataset id."""
    columns: list[str] | None = None
    subset: str | None = None
    """Hugging Face dataset config name (e.g. 'main' for openai/gsm8k)."""
    split: str | None = None
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _fill_from_preset(self) -> BenchmarkConfig:
        preset = PRESETS.get(self.name.lower())
        if preset is None:
            if not self.path or not self.columns:
                raise ValueError(f"benchmark {self.name!r} is not a preset ({', '.join(PRESETS)}): "
                                 "give its path and columns")
            return self
        is_hub = self.path is None or self.path == preset.path
        for key, value in (("path", preset.path), ("columns", preset.columns),
                           ("subset", preset.subset if is_hub else None),
                           ("split", preset.split if is_hub else None)):
            if getattr(self, key) is None and value is not None:
                object.__setattr__(self, key, value)
        return self


class DecontaminateConfig(StageConfig):
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    ngram: int = Field(default=13, ge=3)
    """Word n-gram length for candidate matches."""
    min_ratio: float = Field(default=0.5, gt=0, le=1)
    """difflib ratio of the aligned region a candidate needs to count as a hit."""


class FilterConfig(Section):
    input: list[str] = Field(default_factory=list)
    text_column: str = "text"
    id_column: str = "id"
    on_bad_file: Literal["fail", "skip"] = "fail"
    include_generated: bool = True
    """Also filter RUN_DIR/generated/part-*.parquet (source 'generated')."""
    limit: int | None = Field(default=None, ge=1)
    """At most this many documents per input (needed for streamed Hub datasets); inputs cut short are reported."""
    partition_rows: int = Field(default=20_000, ge=1)
    """Documents per Dask partition and resumable shard, at most (a larger Parquet row group is cut into row ranges); local Parquet inputs are cut finer, to `partition_mb`, to six partitions per thread on a small corpus, and to a multiple of the cluster's threads, so that every thread gets an equal share."""
    partition_mb: float = Field(default=16, gt=0)
    """Text per partition of local Parquet inputs, at most (MB, uncompressed, from the footers): what one task holds in memory, whatever the corpus. A small corpus gets smaller partitions: six per thread, of 2 MB at least."""
    in_process: bool | None = None
    """Run on `workers` threads in this process (true) or on a LocalCluster of worker processes (false); default (null): threads for small inputs (in_process_mb) and for runs whose per-document work all releases the GIL (no heuristics, language, quality or decontamination), processes otherwise. Ignored with a scheduler."""
    worker_wait_s: float = Field(default=300, ge=0)
    """With no Dask worker left (all killed, or gone from `--scheduler`), how long the driver waits for one: it says so on one line, goes on if a worker joins within this many seconds, else stops with one line. The passes done so far are kept and a rerun resumes at the first unfinished one (with any value of this key: it is not part of the outputs' lineage)."""
    in_process_mb: float = Field(default=8, ge=0)
    """Local inputs up to this many MB in all count as small for `in_process`: threads start at once, worker processes must be spawned and import the stage first."""
    normalize: LengthBounds = LengthBounds()
    language: LanguageFilter = LanguageFilter()
    """Language identification (CLD3), first as in FineWeb: keep `languages` with language_score >= min_score."""
    heuristics: HeuristicsConfig = HeuristicsConfig()
    quality: QualityConfig = QualityConfig()
    exact_dedup: StageConfig = StageConfig()
    minhash: MinHashConfig = MinHashConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
