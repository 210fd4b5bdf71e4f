"""The `hub` section: dataset card, model card and push settings."""

from __future__ import annotations

from pydantic import Field

from pipeline.settings import Section


class HubConfig(Section):
    repo_id: str | None = None
    """ORG/NAME of the dataset repo; `textbook push --repo-id` overrides it."""
    model_repo_id: str | None = None
    """ORG/NAME of the model repo for `textbook push --model` (default: repo_id + '-model')."""
    private: bool = False
    license: str = "apache-2.0"
    language: list[str] = Field(default_factory=lambda: ["en"])
    pretty_name: str | None = None
    tags: list[str] = Field(default_factory=lambda: ["synthetic", "textbooks", "education"])
    code_url: str | None = None
    """Git URL of the pipeline's code: linked from the cards and cloned by their reproduce commands."""
    endpoint: str | None = None
    """Hub URL; None uses HF_ENDPOINT, then https://huggingface.co."""
    model_checkpoint: str | None = None
    """Which checkpoints/<name> the model card describes and `--model` pushes (default: the last phase)."""
    large_folder_gb: float = Field(default=5.0, gt=0)
    """Above this upload size the push uses `upload_large_folder` (resumable, multi-commit)."""
    max_card_rows: int = Field(default=200_000, ge=1)
    """Rows of generated text read for the card's diversity metrics (a seeded sample above this)."""
