"""Rephrasing web text by quality route (WRAP, Nemotron-CC, REWIRE): documents -> chunks -> rows.

``generate.rephrase.input`` names the documents: ``filtered`` (the run's kept web text),
``rejected`` (what its filters discarded) or any Parquet/JSONL/Hub text. Each document is split on
paragraph boundaries into chunks of about ``chunk_tokens`` tokens (4 characters a token); its
scores (``edu_score`` and the other ``score_columns``) choose a route, the first of
``generate.rephrase.routes`` whose origin and conditions hold, and the route's template mix chooses
each row's prompt family. A row's RNG and id are a function of (run seed, source id, chunk, variant),
so the same documents plan the same rows in any order, on any run.

Rows carry the usual generated columns plus ``source_id``, ``chunk``, ``route``, ``document`` (the
chunk's text, which the template renders), ``source_<score>`` for each score column, and, once
completed, ``faithfulness``: the share of the chunk's distinct content words the rewrite kept.
"""

from __future__ import annotations

import math
import random
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import ConfigError, DataError
from pipeline.generate.config import GenerateConfig, RephraseConfig, RouteCondition, RouteConfig
from pipeline.generate.render import Template, load_templates
from pipeline.generate.sampler import SEED_VARIABLES, Vocabulary, draw_seeds
from pipeline.io import InputFile, expand_inputs, iter_batches, stable_hash
from pipeline.lineage import content_digest, relative_name
from pipeline.rundir import GENERATED_SOURCE, REASON, SHARD_GLOB, SOURCE, RunDir
from pipeline.settings import public_dict

DOCUMENT = "document"
"""The template variable (and column) holding the chunk's text."""
LINEAGE_COLUMNS = ("source_id", "chunk", "route")
# rejected documents that must never come back as training data, rewritten or not
_NEVER_RECYCLE = ("decontam", "exact_dup", "near_dup")
_PARAGRAPHS = re.compile(r"\n\s*\n")
_WORD = re.compile(r"[^\W\d_]{4,}", re.UNICODE)
_ASCII = frozenset(map(chr, range(128)))
_ASCII_NON_LETTERS = {c: " " for c in range(128) if not chr(c).isalpha()}
_STOPWORDS = frozenset([
    "about", "above", "after", "again", "against", "also", "because", "been", "before", "being", "below",
    "between", "both", "could", "does", "doing", "down", "during", "each", "even", "from", "further", "have",
    "having", "here", "herself", "himself", "into", "itself", "just", "like", "made", "make", "many", "more",
    "most", "much", "must", "myself", "only", "other", "ours", "ourselves", "over", "same", "should", "some",
    "still", "such", "than", "that", "their", "theirs", "them", "themselves", "then", "there", "these", "they",
    "this", "those", "through", "under", "until", "very", "well", "were", "what", "when", "where", "which",
    "while", "whom", "will", "with", "would", "your", "yours", "yourself", "yourselves",
])


@dataclass(frozen=True)
class Document:
    source_id: str
    text: str
    origin: str  # "kept" | "rejected"
    scores: dict[str, float]


def estimate_tokens(text: str) -> int:
    """A cheap token count: about 4 characters a token (no tokenizer on the planning path)."""
    return math.ceil(len(text) / 4)


def chunk_text(text: str, chunk_tokens: int) -> list[str]:
    """``text`` cut into chunks of at most ~``chunk_tokens`` tokens, on paragraph boundaries; a paragraph
    longer than the budget is cut at word boundaries."""
    budget = chunk_tokens * 4
    paragraphs = [p for p in (p.strip() for p in _PARAGRAPHS.split(text)) if p]
    if sum(map(len, paragraphs)) + 2 * (len(paragraphs) - 1) <= budget:
        # the whole document fits (most web pages at the default budget): the one chunk the loop
        # below would build, without building it piece by piece
        return ["\n\n".join(paragraphs)] if paragraphs else []
    pieces: list[str] = []
    for para in paragraphs:
        while len(para) > budget:
            cut = para.rfind(" ", 0, budget)
            cut = cut if cut > 0 else budget
            pieces.append(para[:cut].strip())
            para = para[cut:].strip()
        if para:
            pieces.append(para)
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        if current and size + 2 + len(piece) > budget:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(piece)
        size += len(piece) + (2 if size else 0)
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def matches(condition: RouteCondition, scores: dict[str, Any]) -> bool:
    """Whether ``scores[column] op value``; a missing or NaN score fails every comparison but ``!=``."""
    value = scores.get(condition.column)
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    op, want = condition.op, condition.value
    if op in ("in", "not in"):
        inside = not missing and value in (want or [])
        return inside if op == "in" else not inside
    if missing:
        return op == "!="
    try:
        return {"==": value == want, "!=": value != want, ">": value > want, ">=": value >= want,
                "<": value < want, "<=": value <= want}[op]
    except TypeError:
        raise ConfigError(f"config key 'generate.rephrase.routes': cannot compare {condition.column}={value!r} "
                          f"{op} {want!r}") from None


def route_of(doc: Document, routes: Sequence[RouteConfig]) -> RouteConfig | None:
    """The first route whose origin and conditions hold for ``doc`` (None: the document is skipped)."""
    for route in routes:
        if route.origin != "any" and route.origin != doc.origin:
            continue
        if all(matches(c, doc.scores) for c in route.when):
            return route
    return None


def resolve_inputs(rc: RephraseConfig, run_dir: Path | str) -> list[tuple[InputFile, str]]:
    """Each input file with its origin: ``filtered`` and ``rejected`` name the run's filter outputs."""
    run = RunDir(run_dir)
    rejected_dir = run.rejected.resolve()
    found: list[tuple[InputFile, str]] = []
    for entry in rc.input:
        if entry == "filtered":
            files, origin = expand_inputs(str(run.filtered / SHARD_GLOB)), "kept"
        elif entry == "rejected":
            files, origin = expand_inputs(str(run.rejected / SHARD_GLOB)), "rejected"
        else:
            files, origin = expand_inputs(entry), None
        for f in files:
            is_rejected = not f.on_hub and Path(f.path).resolve().parent == rejected_dir
            found.append((f, origin or ("rejected" if is_rejected else "kept")))
    return found


def load_documents(rc: RephraseConfig, run_dir: Path | str) -> Iterator[Document]:
    """The documents of ``rc.input`` in input order (each id once; generated rows, and rejected ones
    dropped as duplicates or benchmark hits, skipped), up to ``rc.max_documents``."""
    seen: set[str] = set()
    count = 0
    for source, origin in resolve_inputs(rc, run_dir):
        for batch in iter_batches(source):
            if rc.text_column not in batch.columns:
                raise DataError(f"{source.path}: no column '{rc.text_column}' (generate.rephrase.text_column; "
                                f"has: {', '.join(map(str, batch.columns))})")
            present = [c for c in rc.score_columns if c in batch.columns]
            for rec in batch.to_dict("records"):
                text = rec.get(rc.text_column)
                if not isinstance(text, str) or not text.strip():
                    continue
                if rec.get(SOURCE) == GENERATED_SOURCE:
                    continue
                reason = str(rec.get(REASON) or "")
                if reason.startswith(_NEVER_RECYCLE):
                    continue
                raw_id = rec.get(rc.id_column)
                source_id = str(raw_id) if raw_id is not None and raw_id == raw_id else stable_hash(text)
                if source_id in seen:
                    continue
                seen.add(source_id)
                scores = {c: _number(rec.get(c)) for c in present}
                yield Document(source_id, text.strip(), origin, scores)
                count += 1
                if rc.max_documents is not None and count >= rc.max_documents:
                    return


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def plan_rephrase(gen: GenerateConfig, seed: int, run_dir: Path, prompts_dir: Path,
                  vocab: Vocabulary) -> tuple[pd.DataFrame, dict[str, Template]]:
    """The rephrase rows of ``generate.rephrase`` (see the module docstring) and the templates they use."""
    rc = gen.rephrase
    names = list(dict.fromkeys(r.name for r in rc.routes))
    if len(names) != len(rc.routes):
        raise ConfigError("config key 'generate.rephrase.routes': route names must be unique")
    mix = {name: 1.0 for route in rc.routes for name in route.templates}
    for route in rc.routes:
        if not route.templates or not all(w > 0 for w in route.templates.values()):
            raise ConfigError(f"config key 'generate.rephrase.routes': route '{route.name}' needs templates "
                              "with positive weights")
    templates = load_templates(prompts_dir, mix, [*SEED_VARIABLES, DOCUMENT])
    for t in templates.values():
        if DOCUMENT not in t.requires:
            raise ConfigError(f"{t.path}: a rephrase template must render the variable '{DOCUMENT}' "
                              "(add it to the header's requires)")
    sampling = {"model": gen.model, "temperature": gen.temperature, "top_p": gen.top_p,
                "max_tokens": gen.max_tokens}
    score_columns = [f"source_{c}" for c in rc.score_columns]
    rows = []
    read = unrouted = 0
    tested = {c.column for r in rc.routes for c in r.when}
    unscored: dict[str, int] = {}  # a tested score column -> documents without it
    for doc in load_documents(rc, run_dir):
        read += 1
        route = route_of(doc, rc.routes)
        if route is None:
            unrouted += 1
            for column in tested - {k for k, v in doc.scores.items() if v is not None and v == v}:
                unscored[column] = unscored.get(column, 0) + 1
            continue
        route_names = list(route.templates)
        for chunk, text in enumerate(chunk_text(doc.text, rc.chunk_tokens)):
            for k in range(rc.rows_per_chunk):
                rng = random.Random(f"textbook-rephrase:{seed}:{doc.source_id}:{chunk}:{k}")
                name = rng.choices(route_names, weights=[route.templates[n] for n in route_names])[0]
                template = templates[name]
                seeds = draw_seeds(rng, name, [v for v in template.requires if v != DOCUMENT], vocab,
                                   own=template.variables)
                prompt = template.render({**seeds, DOCUMENT: text})
                lineage = {"source_id": doc.source_id, "chunk": chunk, "route": route.name}
                key = stable_hash({"template_sha": template.sha, "seeds": seeds, "document": text, **lineage,
                                   "variant": k, **sampling, "seed": seed})
                rows.append({"id": key, "messages": [{"role": "user", "content": prompt}], "prompt": prompt,
                             "template": name, "template_sha": template.sha, **seeds, DOCUMENT: text, **lineage,
                             **{f"source_{c}": doc.scores.get(c) for c in rc.score_columns}})
    if unrouted:
        why = unrouted_reason(rc, read, unrouted, unscored)
        if unrouted == read:
            raise ConfigError(why)
        print(f"generate: {why}", file=sys.stderr)
    own_columns = sorted({v for t in templates.values() for v in t.variables})
    columns = ["id", "messages", "prompt", "template", "template_sha", *SEED_VARIABLES, *own_columns, DOCUMENT,
               *LINEAGE_COLUMNS, *score_columns]
    frame = pd.DataFrame(rows, columns=columns)
    dtypes = {c: "str" for c in columns if c not in ("messages", "chunk", *score_columns)}
    dtypes |= {"chunk": "int64"} | {c: "float64" for c in score_columns}
    return frame.astype(dtypes), templates


def unrouted_reason(rc: RephraseConfig, read: int, unrouted: int, unscored: dict[str, int]) -> str:
    """Why ``unrouted`` of the ``read`` documents took no route: the score the routes test is missing
    (the usual cause: text that was never scored), or their conditions and origins excluded them."""
    inputs = ", ".join(rc.input)
    head = f"generate.rephrase: {unrouted:,} of {read:,} documents of {inputs} take no route"
    if unscored:
        column, count = max(unscored.items(), key=lambda kv: kv[1])
        return (f"{head}: {count:,} have no {column!r} to route by (generate.rephrase.routes test it); score them "
                f"first (textbook score --input ... --output ..., or rephrase 'filtered' / 'rejected', which "
                f"the filter scored), or route by origin alone (a route with origin any and no 'when')")
    return f"{head}: no route's origin and conditions hold for them (generate.rephrase.routes)"


def rephrase_lineage(rc: RephraseConfig, run_dir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """What shapes the rephrase rows: the section (inputs by name) and each local input by content
    (a Hub source by name), so a changed source document stops a resume."""
    config = public_dict(rc)
    remote, inputs = [], {}
    for source, origin in resolve_inputs(rc, run_dir):
        if source.on_hub:
            remote.append(source.path)
        else:
            inputs[f"rephrase:{origin}:{relative_name(source.path, run_dir)}"] = content_digest(source.path)
    config["remote"] = remote
    return config, inputs


def content_words(text: str) -> set[str]:
    """Distinct lower-cased words of 4+ letters that are not stopwords.

    A word is a run of what ``[^\\W\\d_]`` calls letters. Web text is mostly ASCII but for its
    punctuation (curly quotes, dashes): those become spaces, and then every ASCII non-letter does, so
    ``split`` finds the runs: the regex's words in a fraction of its time (this runs once a rephrased
    row). Text with letters beyond ASCII takes the regex."""
    if not text.isascii():
        for c in set(text) - _ASCII:
            if not c.isalnum() or c.isdecimal():
                text = text.replace(c, " ")
        try:
            text = text.encode("ascii").decode("ascii")  # ASCII now also in its storage (translate's fast path)
        except UnicodeEncodeError:
            return set(map(str.lower, _WORD.findall(text))) - _STOPWORDS
    return {w.lower() for w in set(text.translate(_ASCII_NON_LETTERS).split()) if len(w) > 3} - _STOPWORDS


MIN_CONTENT_WORDS = 5
"""A rewrite with fewer distinct content words than this (or than its source has) says next to nothing."""


def says_nothing(source: str, rewrite: str) -> bool:
    """Whether ``rewrite`` has almost no content (a lone ``\"\"\"``, a heading, a stub) against its
    source: fewer distinct content words than ``MIN_CONTENT_WORDS``, or than its source has."""
    return len(content_words(rewrite)) < min(MIN_CONTENT_WORDS, len(content_words(source)))


def faithfulness(source: str, rewrite: str) -> float:
    """Share of the source's distinct content words that the rewrite keeps (1.0 for a source with none)."""
    words = content_words(source)
    if not words:
        return 1.0
    return round(len(words & content_words(rewrite)) / len(words), 4)


@dataclass(frozen=True)
class Faithfulness:
    """The postprocess of a run with rephrase rows: ``faithfulness`` per rephrased row, and the flag
    ``unfaithful`` below ``min_faithfulness``, or whatever it is for a rewrite that says next to
    nothing (:func:`says_nothing`; a real small model wrote lone ``\"\"\"`` rewrites). Other rows get NaN."""

    min_faithfulness: float
    completion_column: str = "text"

    @property
    def reads(self) -> tuple[str, ...]:
        """The columns of the row it needs (the engine hands it only these)."""
        return DOCUMENT, self.completion_column, "flags"

    def __call__(self, row: dict) -> dict:
        source = row.get(DOCUMENT)
        if not isinstance(source, str) or not source:
            return {"faithfulness": float("nan")}
        rewrite = str(row.get(self.completion_column) or "")
        score = faithfulness(source, rewrite)
        out: dict[str, Any] = {"faithfulness": score}
        if score < self.min_faithfulness or says_nothing(source, rewrite):
            flags = row.get("flags")
            out["flags"] = [*([] if flags is None else list(flags)), "unfaithful"]
        return out
