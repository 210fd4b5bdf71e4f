"""The `generate` section: backend, model, sampling, scale, limits and prices."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from pipeline.settings import Section


class WebSeedConfig(Section):
    """Cosmopedia-style seeding: extracts of a Parquet text column become the prompt's seed."""

    path: list[str] = Field(default_factory=list)
    text_column: str = "text"
    max_chars: int = Field(default=1500, gt=0)
    max_documents: int = Field(default=10_000, gt=0)
    """How many texts to read as the pool that rows draw their extract from."""


class GenerateConfig(Section):
    backend: Literal["openai", "transformers"] = "openai"
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    """OpenAI-compatible endpoint; falls back to OPENAI_BASE_URL, then the OpenAI API."""
    api_key: SecretStr | None = None
    """Falls back to OPENAI_API_KEY. Never written to manifests, logs or cards."""
    num_samples: int = Field(default=1000, ge=0)
    concurrency: int = Field(default=16, ge=1)
    """In-flight requests across the whole cluster."""
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    max_tokens: int = Field(default=1024, ge=1)
    temperature: float = Field(default=0.8, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    price_input_per_million: float = Field(default=0.0, ge=0)
    price_output_per_million: float = Field(default=0.0, ge=0)
    templates: dict[str, float] = Field(
        default_factory=lambda: {
            "textbook": 0.35,
            "exercises": 0.2,
            "story": 0.15,
            "conversation": 0.15,
            "wikihow": 0.15,
        }
    )
    """Template mix: template name (prompts/<name>.j2) -> sampling weight."""
    prompts_dir: str | None = None
    """Folder of *.j2 templates and seeds/*.yaml; None uses the project's prompts/."""
    web_seed: WebSeedConfig = WebSeedConfig()
    shard_size: int = Field(default=100, ge=1)
    max_retries: int = Field(default=6, ge=0)
    request_timeout_s: float = Field(default=120.0, gt=0)
    http_client: Literal["aiohttp", "httpx"] = "aiohttp"
    """HTTP transport under the openai SDK: aiohttp (about 40% less client CPU per request) or the SDK's default httpx."""
    batch_size: int = Field(default=8, ge=1)
    """Prompts per forward pass for the in-process transformers backend."""
    device: str | None = None
    """torch device for the transformers backend (default: cuda if available, else cpu)."""
    diversity_max_opening_share: float = Field(default=0.25, gt=0, le=1)
    """Largest share of rows that may start with the same 3-word opening (TinyStories: 59%)."""
    diversity_gate: Literal["warn", "fail", "off"] = "warn"
    """When the opening share is exceeded: warn (after the run), fail (stop the run once 50 rows show it, exit 1), or off."""
    retry_backoff_s: float = Field(default=0.5, gt=0)
    """First retry delay; doubles per attempt (with jitter, capped at 30 s) unless Retry-After says more."""
