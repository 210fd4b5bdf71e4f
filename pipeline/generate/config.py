"""The `generate` section: the engine's settings plus templates, seeds, rephrasing and the diversity gate."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipeline.llm.config import LLMConfig
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


class GenerateConfig(LLMConfig):
    """The engine's settings (:class:`~pipeline.llm.config.LLMConfig`) and what generate prompts with."""

    num_samples: int = Field(default=1000, ge=0)
    generations_per_prompt: int = Field(default=1, ge=1)
    """Rows per distinct prompt: 1 gives every row its own prompt; n asks for n completions of each (consecutive rows, own ids)."""
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
    diversity_max_opening_share: float = Field(default=0.25, gt=0, le=1)
    """Largest share of rows that may start with the same 3-word opening (TinyStories: 59%)."""
    max_flagged_share: float = Field(default=0.2, ge=0, le=1)
    """Share of rows flagged ``truncated`` or ``repetitive`` above which the run says, in one line, what to change."""
    diversity_gate: Literal["warn", "fail", "off"] = "warn"
    """When the opening share is exceeded: warn (after the run), fail (stop the run once 50 rows show it, exit 1), or off."""
