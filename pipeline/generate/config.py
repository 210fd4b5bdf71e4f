"""The `generate` section: backend, model, sampling, scale, limits and prices."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr

from pipeline.settings import Section


class WebSeedConfig(Section):
    """Cosmopedia-style seeding: extracts of a Parquet text column become the prompt's seed."""

    path: list[str] = Field(default_factory=list)
    text_column: str = "text"
    max_chars: int = Field(default=1500, gt=0)
    max_documents: int = Field(default=10_000, gt=0)
    """How many texts to read as the pool that rows draw their extract from."""


class RouteCondition(Section):
    """``column op value`` on a source document (e.g. ``{column: edu_score, op: "<", value: 0.3}``)."""

    column: str
    op: Literal["==", "!=", ">", ">=", "<", "<=", "in", "not in"] = "=="
    value: Any = None


class RouteConfig(Section):
    """A quality bucket: the documents it takes and the prompt families (templates) it rewrites them with."""

    name: str
    origin: Literal["kept", "rejected", "any"] = "kept"
    """Which documents: ``kept`` (filtered/ and other inputs), ``rejected`` (filtered/rejected/: the recycle route), or any."""
    when: list[RouteCondition] = Field(default_factory=list)
    """All must hold; a document with a missing or NaN score fails a comparison on it."""
    templates: dict[str, float]
    """Template (prompts/<name>.j2, rendering ``document``) -> weight; each chunk draws one per row."""


def _default_routes() -> list[RouteConfig]:
    # Nemotron-CC style: low quality is rephrased Wikipedia-style, high quality becomes diverse
    # QA/knowledge formats; REWIRE's recycle route rewrites what the filters discarded
    return [
        RouteConfig(name="recycle", origin="rejected", templates={"rephrase_wikipedia": 1}),
        RouteConfig(name="low", when=[RouteCondition(column="edu_score", op="<", value=0.5)],
                    templates={"rephrase_wikipedia": 1}),
        RouteConfig(name="high", when=[RouteCondition(column="edu_score", op=">=", value=0.5)],
                    templates={"rephrase_qa": 1, "rephrase_knowledge_list": 1, "rephrase_tutorial": 1,
                               "rephrase_faq": 1, "rephrase_table": 1, "rephrase_math": 1}),
    ]


class RephraseConfig(Section):
    """Rewrite web documents (WRAP / Nemotron-CC / REWIRE): each chunk of each document becomes rows."""

    input: list[str] = Field(default_factory=list)
    """Documents to rephrase: ``filtered`` (RUN_DIR/filtered/), ``rejected`` (RUN_DIR/filtered/rejected/), or Parquet/JSONL paths, globs, Hub ids; [] = off."""
    text_column: str = "text"
    id_column: str = "id"
    """Source document id; a hash of the text where the input has no such column."""
    score_columns: list[str] = Field(default_factory=lambda: ["edu_score"])
    """Scores carried from the source as ``source_<name>`` and usable in route conditions."""
    routes: list[RouteConfig] = Field(default_factory=_default_routes)
    """Buckets in order; a document takes the first whose origin and conditions match (none: skipped)."""
    chunk_tokens: int = Field(default=1024, ge=16)
    """Token budget of a chunk (~4 characters a token); long documents split on paragraph boundaries."""
    rows_per_chunk: int = Field(default=1, ge=1)
    """Rewrites per chunk, each drawing its template from the route's mix."""
    max_documents: int | None = Field(default=None, ge=1)
    """Read at most this many documents (over all inputs, in order)."""
    min_faithfulness: float = Field(default=0.0, ge=0, le=1)
    """Flag ``unfaithful`` a rewrite keeping less than this share of its source's content words (0 = off; a
    rewrite with almost no content, under 5 distinct content words, is flagged whatever this is)."""


class ConversationConfig(Section):
    """How rows of the ``conversation`` template are built: turn by turn, one request per turn."""

    turns: int = Field(default=2, ge=1)
    """Exchanges per conversation: each is a student (user) turn and a teacher (assistant) answer, so a
    conversation costs 2 * turns requests."""


class GenerateConfig(Section):
    backend: Literal["openai", "transformers"] = "openai"
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    """OpenAI-compatible endpoint; falls back to OPENAI_BASE_URL, then the OpenAI API."""
    api_key: SecretStr | None = None
    """Falls back to OPENAI_API_KEY. Never written to manifests, logs or cards."""
    num_samples: int = Field(default=1000, ge=0)
    generations_per_prompt: int = Field(default=1, ge=1)
    """Rows per distinct prompt: 1 gives every row its own prompt; n asks for n completions of each (consecutive rows, own ids)."""
    concurrency: int = Field(default=16, ge=1)
    """In-flight requests across the whole cluster."""
    requests_per_minute: float | None = Field(default=None, gt=0)
    """Requests started per minute across the cluster (null: no cap); a cap that makes requests wait is named once on stderr."""
    tokens_per_minute: float | None = Field(default=None, gt=0)
    """Tokens per minute across the cluster, a request counted as its prompt (~4 characters a token) plus max_tokens (null: no cap)."""
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
    conversation: ConversationConfig = ConversationConfig()
    rephrase: RephraseConfig = RephraseConfig()
    """Rephrasing web text by quality route; rows follow the ``num_samples`` template rows."""
    shard_size: int = Field(default=100, ge=1)
    max_retries: int = Field(default=6, ge=0)
    request_timeout_s: float = Field(default=120.0, gt=0)
    http_client: Literal["aiohttp", "httpx"] = "aiohttp"
    """aiohttp: the chat completions wire protocol spoken directly over aiohttp (~0.3 ms of client CPU a request); httpx: through the openai SDK and its default httpx client (~1.4 ms)."""
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
