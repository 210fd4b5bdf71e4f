"""The `annotate` and `classifier` sections: LLM labels and the fastText educational-value model."""

from __future__ import annotations

from pydantic import Field

from pipeline.settings import Section


class AnnotateConfig(Section):
    input: list[str] = Field(default_factory=list)
    """Web text to label: Parquet/JSONL globs or hf:// datasets."""
    text_column: str = "text"
    id_column: str | None = None
    """Column with document ids; None derives a stable id from the text."""
    num_documents: int = Field(default=1000, ge=1)
    """Documents sampled (seeded, uniformly) from the input."""
    template: str = "edu_rubric"
    """prompts/<template>.j2, rendered with ``text`` (the document, truncated to max_chars)."""
    max_chars: int = Field(default=6000, gt=0)
    """Characters of each document shown to the LLM."""
    max_tokens: int = Field(default=384, ge=16)
    """Completion budget for the justification and the score line."""
    temperature: float = Field(default=0.0, ge=0)
    max_failure_share: float = Field(default=0.5, ge=0, le=1)
    """Stop the run (exit 2) when more than this share of the answers is unparseable; 1 never stops."""
    failure_min_answers: int = Field(default=50, ge=1)
    """Answers before the failure share is judged: the first wave; later waves are a tenth of the run."""


class ClassifierConfig(Section):
    input: list[str] = Field(default_factory=list)
    """Labelled Parquet/JSONL; empty means the run's annotations (RUN_DIR/annotations)."""
    label_column: str = "score"
    threshold: float = 3.0
    """A document is positive when its label >= threshold."""
    positives: list[str] = Field(default_factory=list)
    """DCLM style: paths whose documents are all positive (e.g. generated textbooks) ..."""
    negatives: list[str] = Field(default_factory=list)
    """... against paths whose documents are all negative (e.g. random web text)."""
    text_column: str = "text"
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    """Held-out share of each class (stratified, seeded split)."""
    min_auc: float = Field(default=0.6, ge=0, le=1)
    """Refuse to install a model whose validation ROC-AUC is below this (0.5 is chance)."""
    min_validation_per_class: int = Field(default=5, ge=1)
    """Refuse a model when a validation class has fewer documents: its metrics measure nothing."""
    min_score_spread: float = Field(default=0.1, ge=0, le=1)
    """Refuse a model whose validation scores (5th to 95th percentile, per class) span less: it barely tells documents apart."""
    accept_unreliable: bool = False
    """Install anyway when validation is too small or its scores too narrow to measure the model (the report says so)."""
    max_documents: int | None = Field(default=None, ge=2)
    """Cap on labelled documents read (seeded sample per class when exceeded); None reads all."""
    epoch: int = Field(default=10, ge=1)
    lr: float = Field(default=0.2, gt=0)
    dim: int = Field(default=64, ge=2)
    word_ngrams: int = Field(default=2, ge=1)
    min_count: int = Field(default=2, ge=1)
    bucket: int = Field(default=200_000, ge=1000)
    """Hash buckets for word n-grams: model size is about bucket * dim * 4 bytes."""
    threads: int | None = Field(default=None, ge=1)
    """fastText training threads (default: all cores); 1 makes training reproducible."""
