"""The engine's settings: backend, model, sampling, limits, prices, shards and the Batch API.

They are read from the ``generate`` section (``GenerateConfig`` adds the prompting keys to them),
which ``annotate`` runs its requests with too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from pipeline.settings import Section


class LLMConfig(Section):
    backend: Literal["openai", "transformers"] = "openai"
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    """OpenAI-compatible endpoint; falls back to OPENAI_BASE_URL, then the OpenAI API."""
    api_key: SecretStr | None = None
    """Falls back to OPENAI_API_KEY. Never written to manifests, logs or cards."""
    concurrency: int = Field(default=16, ge=1)
    """In-flight requests across the whole cluster."""
    requests_per_minute: float | None = Field(default=None, gt=0)
    """Requests started per minute across the cluster (null: no cap); a cap that makes requests wait is named once on stderr."""
    tokens_per_minute: float | None = Field(default=None, gt=0)
    """Tokens per minute across the cluster, a request counted as its prompt (~4 characters a token) plus max_tokens (null: no cap)."""
    max_tokens: int = Field(default=1024, ge=1)
    temperature: float = Field(default=0.8, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    """Penalise tokens already in the text (transformers' ``repetition_penalty``; 1.1-1.3 keeps a small model from looping). The transformers backend applies it; a server gets it only when set (vLLM, TGI, llama.cpp and transformers serve accept it, OpenAI's API does not)."""
    max_cost_usd: float | None = Field(default=None, gt=0)
    price_input_per_million: float = Field(default=0.0, ge=0)
    price_output_per_million: float = Field(default=0.0, ge=0)
    shard_size: int = Field(default=100, ge=1)
    max_retries: int = Field(default=6, ge=0)
    request_timeout_s: float = Field(default=120.0, gt=0)
    http_client: Literal["aiohttp", "httpx"] = "aiohttp"
    """aiohttp: the chat completions wire protocol spoken directly over aiohttp (the least client CPU a request); httpx: through the openai SDK and its default httpx client."""
    batch_size: int = Field(default=8, ge=1)
    """Prompts per forward pass for the in-process transformers backend."""
    device: str | None = None
    """torch device for the transformers backend (default: cuda if available, else cpu)."""
    retry_backoff_s: float = Field(default=0.5, gt=0)
    """First retry delay; doubles per attempt (with jitter, capped at 30 s) unless Retry-After says more."""
    mode: Literal["online", "batch"] = "online"
    """online: one request per row now; batch: the same rows through the provider's Batch API (/v1/files + /v1/batches: results within 24 h at batch prices)."""
    batch_discount: float = Field(default=0.5, gt=0, le=1)
    """Batch price as a share of the online prices (OpenAI's Batch API: half); the ledger and the dry-run estimate use it in batch mode."""
    batch_poll_s: float = Field(default=30.0, gt=0)
    """Seconds between polls of the submitted batches."""
    batch_completion_window: Literal["24h"] = "24h"
    """The batches' completion window (the only one OpenAI offers)."""
    batch_max_requests: int = Field(default=50_000, ge=1)
    """Rows per batch file (OpenAI's limit: 50,000 requests and 200 MB)."""
    batch_wait: bool = True
    """Wait for the batches to finish; false submits them and returns (a rerun collects the results)."""
