"""The `eval` section: which tasks score a checkpoint, how many items, how many few-shot examples."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.settings import Section


class TaskConfig(Section):
    """One task: a local file (``path``) or a Hugging Face dataset (``hf``), in one of the known layouts."""

    name: str
    path: str | None = None
    """Local JSONL/Parquet/CSV file, glob or folder."""
    hf: str | None = None
    """Hugging Face dataset id (e.g. allenai/ai2_arc), loaded with `datasets`."""
    subset: str | None = None
    """Hugging Face dataset config (e.g. ARC-Easy)."""
    format: Literal["mc_jsonl", "mmlu_csv", "mmlu", "arc", "hellaswag", "piqa", "openbookqa", "commonsenseqa"]
    split: str = "test"
    fewshot_split: str | None = None
    """Split (hf) or file (path) the few-shot examples come from; None draws them from the task's own
    items and never scores an item with itself as an example."""
    num_fewshot: int = Field(default=0, ge=0)
    max_items: int | None = Field(default=500, ge=1)
    """Items scored: a seeded subset when the task has more."""
    form: Literal["cloze", "mc"] = "cloze"
    """cloze: each continuation is the answer text; mc: the choices are listed and the continuation is a letter."""

    @model_validator(mode="after")
    def _one_source(self) -> TaskConfig:
        if (self.path is None) == (self.hf is None):
            raise ValueError(f"task {self.name!r}: give exactly one of path (a local file) or hf (a dataset id)")
        return self


def early_signal_tasks() -> list[TaskConfig]:
    """The DCLM/nanochat early-signal set, from the Hub: give each a local ``path`` to run offline."""
    return [
        TaskConfig(name="arc_easy", hf="allenai/ai2_arc", subset="ARC-Easy", format="arc", num_fewshot=10,
                   fewshot_split="train"),
        TaskConfig(name="arc_challenge", hf="allenai/ai2_arc", subset="ARC-Challenge", format="arc",
                   num_fewshot=10, fewshot_split="train"),
        TaskConfig(name="hellaswag", hf="Rowan/hellaswag", format="hellaswag", split="validation", num_fewshot=0),
        TaskConfig(name="piqa", hf="ybisk/piqa", format="piqa", split="validation", num_fewshot=10,
                   fewshot_split="train"),
        TaskConfig(name="openbookqa", hf="allenai/openbookqa", subset="main", format="openbookqa",
                   num_fewshot=0),
        TaskConfig(name="commonsenseqa", hf="tau/commonsense_qa", format="commonsenseqa", split="validation",
                   num_fewshot=10, fewshot_split="train"),
        TaskConfig(name="mmlu", hf="cais/mmlu", subset="all", format="mmlu", num_fewshot=5, fewshot_split="dev"),
    ]


class EvalConfig(Section):
    tasks: list[TaskConfig] = Field(default_factory=early_signal_tasks)
    """Downstream tasks (default: ARC-Easy/Challenge, HellaSwag, PIQA, OpenBookQA, CommonsenseQA, MMLU from the Hub)."""
    seed: int = 1234
    """Seeds the few-shot draws and the max_items subsets: part of the bundle digest."""
    batch_size: int = 32
    """Sequences per forward pass (raise it on a GPU)."""
    max_length: int | None = None
    """Context window; longer sequences lose their left end (default: the model's max_position_embeddings)."""
    bpb_domains: dict[str, str] = {"web": "web", "textbook": "textbook", "chat": "chat"}
    """Eval domain -> train source whose held-out documents give bits per byte; a source without files is skipped."""
    bpb_docs: int = Field(default=200, ge=0)
    """Held-out documents per bpb domain."""
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("tasks")
    @classmethod
    def _distinct_names(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        names = [t.name for t in tasks]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise ValueError(f"two tasks are named {twice!r}: a name keys a task's scores, so each must be unique")
        return tasks
