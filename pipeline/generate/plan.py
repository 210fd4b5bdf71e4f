"""The plan of a generate run: one request per row, with its rendered prompt, seeds and row key."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError, GenerateError
from pipeline.generate.config import GenerateConfig, WebSeedConfig
from pipeline.generate.render import PROMPTS_DIR, Template, load_templates
from pipeline.generate.sampler import (
    SEED_VARIABLES,
    Vocabulary,
    draw_row,
    load_vocabulary,
    row_rng,
    seed_space,
)
from pipeline.io import expand_inputs, iter_batches, stable_hash
from pipeline.lineage import content_digest, fingerprint, relative_name


def plan_requests(gen: GenerateConfig, seed: int, run_dir: Path) -> tuple[pd.DataFrame, dict[str, Template]]:
    """Rows ``0..num_samples-1`` as requests: ``id``, ``messages``, ``prompt``, ``template``,
    ``template_sha`` and the seed values (``None`` where the row's template does not use one).

    Prompts are distinct unless ``generate.generations_per_prompt`` asks for several rows of each
    (``build_requests``). The ``id`` hashes the template version, the seed values, the model and the
    sampling parameters, plus the run seed and row index: rows of one prompt are still separate
    samples (at temperature > 0 they differ), and must not collapse into one key.
    """
    prompts_dir = Path(gen.prompts_dir) if gen.prompts_dir else PROMPTS_DIR
    templates = load_templates(prompts_dir, gen.templates, SEED_VARIABLES)
    vocab = load_vocabulary(prompts_dir / "seeds")
    needs_web = [t.name for t in templates.values() if "extract" in t.requires]
    extracts: list[str] = []
    if needs_web:
        if not gen.web_seed.path:
            raise GenerateError(f"config key 'generate.web_seed.path': template '{needs_web[0]}' is web-seeded; "
                                "give Parquet/JSONL files with a text column")
        extracts = load_extracts(gen.web_seed)
    requests = build_requests(gen, seed, templates, vocab, extracts)
    if gen.rephrase.input:
        from pipeline.generate.rephrase import plan_rephrase

        rephrased, rephrase_templates = plan_rephrase(gen, seed, run_dir, prompts_dir, vocab)
        requests = _concat(requests, rephrased)
        templates = {**templates, **rephrase_templates}
    return requests, templates


def _concat(plain: pd.DataFrame, rephrased: pd.DataFrame) -> pd.DataFrame:
    """The plain rows, then the rephrased rows; every column of either, missing values where a row has none."""
    if not len(plain):
        return rephrased.reset_index(drop=True)
    frame = pd.concat([plain, rephrased], ignore_index=True)
    return frame.astype({**{c: "str" for c in plain.columns if c != "messages"}, "chunk": "Int64"})


def _set_penalty(gen: GenerateConfig) -> dict[str, float]:
    """The repetition penalty, in row keys and lineage only when set: runs without it keep their ids."""
    return {} if gen.repetition_penalty is None else {"repetition_penalty": gen.repetition_penalty}


def plan_lineage(gen: GenerateConfig, seed: int, run_dir: Path, templates: dict[str, Template]) -> dict:
    """The fingerprint of what shapes the rows: the settings in the row key, the template and seed
    files (by content) and the local web-seed files (by content; other sources by name).

    ``num_samples`` is not part of it: row ``i`` does not depend on it, so a run may grow.
    ``shard_size`` is: it decides which part holds a row.
    """
    prompts_dir = Path(gen.prompts_dir) if gen.prompts_dir else PROMPTS_DIR
    config: dict = {"seed": seed, "generate": {
        "backend": gen.backend, "model": gen.model, "temperature": gen.temperature, "top_p": gen.top_p,
        "max_tokens": gen.max_tokens, "templates": dict(gen.templates), "shard_size": gen.shard_size,
        "generations_per_prompt": gen.generations_per_prompt, **_set_penalty(gen)}}
    if gen.backend == "transformers":
        config["generate"]["batch_size"] = gen.batch_size  # a batch shares one sampling seed
    inputs = {f"prompts/{t.path.name}": content_digest(t.path) for t in templates.values()}
    inputs |= {f"prompts/seeds/{p.name}": content_digest(p) for p in sorted((prompts_dir / "seeds").glob("*.yaml"))}
    if "conversation" in gen.templates:  # its rows are built turn by turn: the turn settings and template
        from pipeline.generate.conversation import conversation_lineage

        config["generate"]["conversation"], turn_inputs = conversation_lineage(gen)
        inputs |= turn_inputs
    if gen.rephrase.input:
        from pipeline.generate.rephrase import rephrase_lineage

        extra_config, extra_inputs = rephrase_lineage(gen.rephrase, run_dir)
        config["generate"]["rephrase"] = extra_config
        inputs |= extra_inputs
    if any("extract" in t.requires for t in templates.values() if t.name in gen.templates):
        web = gen.web_seed
        remote = []
        for source in expand_inputs(web.path):
            if source.on_hub:
                remote.append(source.path)
            else:
                inputs[relative_name(source.path, run_dir)] = content_digest(source.path)
        config["generate"]["web_seed"] = {"text_column": web.text_column, "max_chars": web.max_chars,
                                          "max_documents": web.max_documents, "remote": remote}
    return fingerprint(config, inputs, {})


MAX_DRAWS = 10_000
"""Draws a prompt may take to differ from every earlier one before planning gives up: near the end of
a template's variable space most draws repeat, and a plan must not spin there."""


def build_requests(gen: GenerateConfig, seed: int, templates: dict[str, Template], vocab: Vocabulary,
                   extracts: list[str], generations_per_prompt: int | None = None) -> pd.DataFrame:
    """The ``num_samples`` template rows: each prompt distinct, repeated ``generations_per_prompt``
    times in a row (default: the config's ``generate.generations_per_prompt``).

    Prompt ``p`` (rows ``p * g`` to ``p * g + g - 1``) is drawn from the RNG of ``(seed, p)``; while
    it repeats an earlier prompt, it is drawn again from that RNG. So prompt ``p`` depends on the
    prompts before it but not on how many come after: a plan of ``n`` rows is the first ``n`` rows
    of a larger one, and a rerun plans the same rows, ids and prompts. With ``g = 1`` a prompt that
    repeats nothing is the one its row drew before prompts were made distinct.
    """
    per_prompt = generations_per_prompt or gen.generations_per_prompt
    requires = {name: t.requires for name, t in templates.items()}
    own = {name: t.variables for name, t in templates.items() if t.variables}
    sampling = {"model": gen.model, "temperature": gen.temperature, "top_p": gen.top_p,
                "max_tokens": gen.max_tokens, **_set_penalty(gen)}
    prompts_needed = -(-gen.num_samples // per_prompt)
    space = {name: seed_space(requires[name], vocab, extracts, own.get(name)) for name in gen.templates}
    possible = sum(space.values())
    if prompts_needed > possible:
        raise GenerateError(_exhausted(gen.num_samples, per_prompt, prompts_needed, possible, gen.templates))
    rows = []
    seen: set[str] = set()
    drawn = Counter[str]()
    for p in range(prompts_needed):
        rng = row_rng(seed, p)
        for _ in range(MAX_DRAWS):
            seeds = draw_row(rng, gen.templates, requires, vocab, extracts, own)
            template = templates[seeds["template"]]
            prompt = template.render(seeds)
            if prompt not in seen:
                break
        else:
            raise GenerateError(f"{_exhausted(gen.num_samples, per_prompt, prompts_needed, possible, gen.templates)}"
                                f"; prompt {p} repeated an earlier one in {MAX_DRAWS:,} draws")
        seen.add(prompt)
        drawn[template.name] += 1
        for i in range(p * per_prompt, min((p + 1) * per_prompt, gen.num_samples)):
            key = stable_hash({"template_sha": template.sha, "seeds": seeds, **sampling, "seed": seed, "row": i})
            rows.append({"id": key, "messages": [{"role": "user", "content": prompt}], "prompt": prompt,
                         "template_sha": template.sha, **seeds})
    for name, count in drawn.items():
        if count > space[name] / 2:  # most later draws repeat: the distinct ones drift from the weights
            print(f"warning: template '{name}' has {count:,} of its at most {space[name]:,} distinct prompts "
                  "in this plan; as they run out its share drifts below its weight in generate.templates and its "
                  "variables toward equal weights (add seed values, or raise generate.generations_per_prompt)",
                  file=sys.stderr)
    own_columns = sorted({v for variables in own.values() for v in variables})
    columns = ["id", "messages", "prompt", "template", "template_sha", *SEED_VARIABLES, *own_columns]
    frame = pd.DataFrame(rows, columns=columns)
    # one string dtype per seed column, whether or not any row of this run uses it
    return frame.astype({c: "str" for c in columns if c != "messages"})


def _exhausted(num_samples: int, per_prompt: int, needed: int, possible: int, mix: dict[str, float]) -> str:
    """Why a plan cannot give ``needed`` distinct prompts, with what the user can change."""
    return (f"config key 'generate.num_samples': {num_samples:,} rows at generate.generations_per_prompt="
            f"{per_prompt} need {needed:,} distinct prompts, but the templates {', '.join(mix)} can make at most "
            f"{possible:,}; lower num_samples, add seed values or templates, or raise generations_per_prompt")


def load_extracts(web: WebSeedConfig) -> list[str]:
    """Up to ``web.max_documents`` texts of ``web.text_column``, each cut to ``web.max_chars`` at a word."""
    extracts: list[str] = []
    for source in expand_inputs(web.path):
        left = web.max_documents - len(extracts)
        if left <= 0:
            break
        for batch in iter_batches(source, [web.text_column], limit=left):
            for text in batch[web.text_column]:
                if isinstance(text, str) and text.strip():
                    extracts.append(_cut(text.strip(), web.max_chars))
    if not extracts:
        raise DataError(f"config key 'generate.web_seed.path': no non-empty '{web.text_column}' texts found")
    return extracts


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut[: cut.rfind(" ")] if " " in cut else cut
