"""The `annotate` and `classifier` sections: LLM labels and the fastText educational-value model."""

from __future__ import annotations

from pydantic import Field

from pipeline.settings import Section


class AnnotateConfig(Section):
    input: list[str] = Field(default_factory=list)
    """Web text to label: Parquet/JSONL globs or hf:// datasets."""
    text_column: str = "text"
    num_documents: int = Field(default=1000, ge=1)
    template: str = "edu_rubric"


class ClassifierConfig(Section):
    input: list[str] = Field(default_factory=list)
    """Labelled Parquet; empty means the run's annotations."""
    label_column: str = "score"
    threshold: float = 3.0
    positives: list[str] = Field(default_factory=list)
    negatives: list[str] = Field(default_factory=list)
    text_column: str = "text"
