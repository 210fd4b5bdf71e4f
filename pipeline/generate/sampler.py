"""Seeded, weighted sampling of prompt seeds: (run seed, row index) -> template and seed values.

Row ``i`` draws from its own RNG, seeded by ``(seed, i)`` and not by a shared stream, so a row's
prompt never depends on how many rows come after it, on sharding, or on resume. Only the variables
the row's template declares are drawn; the others stay ``None``. A template's own variables (declared
with their vocabulary in its header, see ``render``) are drawn last, in name order. A plan that wants
each prompt once draws a row again from the same RNG while its prompt repeats an earlier row's
(``pipeline.generate.plan``); ``seed_space`` bounds how many distinct prompts a template can give.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import GenerateError
from pipeline.io import read_yaml

# variable -> the seed group that draws it (a group draws related variables together)
SEED_VARIABLES = {
    "subject": "taxonomy", "topic": "taxonomy", "subtopic": "taxonomy",
    "audience": "audience", "style": "style",
    "noun": "words", "verb": "words", "adjective": "words", "features": "features",
    "extract": "web",
}


@dataclass(frozen=True)
class Vocabulary:
    """The seed vocabularies of ``prompts/seeds/*.yaml``, as weighted choices."""

    subjects: list[tuple[str, float, dict[str, list[str]]]]
    audiences: list[tuple[str, str, float]]
    styles: list[tuple[str, str, float]]
    nouns: list[str]
    verbs: list[str]
    adjectives: list[str]
    features: list[tuple[str, str, float]]

    @property
    def topic_count(self) -> int:
        return sum(len(topics) for _, _, topics in self.subjects)


def load_vocabulary(seeds_dir: Path) -> Vocabulary:
    """Read taxonomy/audiences/styles/tinystories YAML; errors name the file and the entry."""
    seeds_dir = Path(seeds_dir)
    tax = _read(seeds_dir / "taxonomy.yaml", "subjects")
    subjects = []
    for s in tax["subjects"]:
        topics = s.get("topics") or {}
        if not topics or not all(isinstance(v, list) and v for v in topics.values()):
            raise GenerateError(f"{seeds_dir / 'taxonomy.yaml'}: subject {s.get('name')!r} needs topics, "
                                "each with a non-empty list of subtopics")
        subjects.append((str(s["name"]), _weight(s, seeds_dir / "taxonomy.yaml"), topics))
    aud = _read(seeds_dir / "audiences.yaml", "audiences")["audiences"]
    sty = _read(seeds_dir / "styles.yaml", "styles")["styles"]
    words = _read(seeds_dir / "tinystories.yaml", "nouns", "verbs", "adjectives", "features")
    return Vocabulary(
        subjects=subjects,
        audiences=[(a["name"], a["description"], _weight(a, seeds_dir / "audiences.yaml")) for a in aud],
        styles=[(s["name"], s["instruction"], _weight(s, seeds_dir / "styles.yaml")) for s in sty],
        nouns=list(words["nouns"]), verbs=list(words["verbs"]), adjectives=list(words["adjectives"]),
        features=[(f["name"], f["instruction"], _weight(f, seeds_dir / "tinystories.yaml"))
                  for f in words["features"]])


def _read(path: Path, *keys: str) -> dict[str, Any]:
    data = read_yaml(path, GenerateError, "seed vocabulary")
    for key in keys:
        if not isinstance(data, dict) or not data.get(key):
            raise GenerateError(f"{path}: missing or empty key '{key}'")
    return data


def _weight(entry: Mapping[str, Any], path: Path) -> float:
    weight = entry.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or weight <= 0:
        raise GenerateError(f"{path}: entry {entry.get('name')!r}: weight must be a positive number (got {weight!r})")
    return float(weight)


def row_rng(seed: int, index: int) -> random.Random:
    """The RNG of row ``index``: a function of (seed, index) alone."""
    return random.Random(f"textbook-row:{seed}:{index}")


def sample_row(seed: int, index: int, mix: Mapping[str, float], requires: Mapping[str, Sequence[str]],
               vocab: Vocabulary, extracts: Sequence[str] = (),
               own: Mapping[str, Mapping[str, Sequence[tuple[str, float]]]] | None = None) -> dict[str, Any]:
    """Template name and seed values of row ``index``: ``{"template": ..., "topic": ..., ...}``.

    ``own`` maps a template to the variables it declares itself (name -> weighted values); a row of
    that template also holds those, drawn after the shared seeds (so templates without any draw
    exactly what they drew before such variables existed).
    """
    return draw_row(row_rng(seed, index), mix, requires, vocab, extracts, own)


def draw_row(rng: random.Random, mix: Mapping[str, float], requires: Mapping[str, Sequence[str]],
             vocab: Vocabulary, extracts: Sequence[str] = (),
             own: Mapping[str, Mapping[str, Sequence[tuple[str, float]]]] | None = None) -> dict[str, Any]:
    """One draw of a row's template and seed values from ``rng``; the next call on it draws afresh."""
    names = list(mix)
    template = rng.choices(names, weights=[mix[n] for n in names])[0]
    return {"template": template, **draw_seeds(rng, template, requires[template], vocab, extracts,
                                               (own or {}).get(template, {}))}


def draw_seeds(rng: random.Random, template: str, requires: Sequence[str], vocab: Vocabulary,
               extracts: Sequence[str] = (), own: Mapping[str, Sequence[tuple[str, float]]] | None = None
               ) -> dict[str, Any]:
    """The shared seed values a template requires (``None`` for the others), then its own variables."""
    groups = {SEED_VARIABLES[v] for v in requires if v in SEED_VARIABLES}
    row: dict[str, Any] = {}
    # draw groups in a fixed order so a row's values do not depend on set iteration order
    if "taxonomy" in groups:
        subject, _, topics = rng.choices(vocab.subjects, weights=[w for _, w, _ in vocab.subjects])[0]
        topic = rng.choice(sorted(topics))
        row.update(subject=subject, topic=topic, subtopic=rng.choice(topics[topic]))
    if "audience" in groups:
        row["audience"] = rng.choices(vocab.audiences, weights=[w for *_, w in vocab.audiences])[0][1]
    if "style" in groups:
        row["style"] = rng.choices(vocab.styles, weights=[w for *_, w in vocab.styles])[0][1]
    if "words" in groups:
        row.update(noun=rng.choice(vocab.nouns), verb=rng.choice(vocab.verbs),
                   adjective=rng.choice(vocab.adjectives))
    if "features" in groups:
        row["features"] = ", ".join(_weighted_sample(rng, vocab.features, rng.choice([1, 2])))
    if "web" in groups:
        if not extracts:
            raise GenerateError(f"template '{template}' needs web extracts: set generate.web_seed.path")
        row["extract"] = extracts[rng.randrange(len(extracts))]
    declared = set(requires)
    values = {k: row.get(k) if k in declared else None for k in SEED_VARIABLES}
    for name in sorted(own or {}):  # sorted: the header's key order does not change the draws
        pairs = own[name]
        values[name] = rng.choices([v for v, _ in pairs], weights=[w for _, w in pairs])[0]
    return values


def seed_space(requires: Sequence[str], vocab: Vocabulary, extracts: Sequence[str] = (),
               own: Mapping[str, Sequence[tuple[str, float]]] | None = None) -> int:
    """How many distinct value combinations a template requiring ``requires`` can draw.

    An upper bound of the distinct prompts it renders (two combinations may render alike); only the
    declared variables count, so a template that shows ``topic`` alone gets one per distinct topic.
    """
    declared = [v for v in SEED_VARIABLES if v in set(requires)]
    taxonomy = [v for v in ("subject", "topic", "subtopic") if v in declared]
    count = 1
    if taxonomy:
        triples = [{"subject": subject, "topic": topic, "subtopic": subtopic}
                   for subject, _, topics in vocab.subjects for topic, subtopics in topics.items()
                   for subtopic in subtopics]
        count *= len({tuple(t[v] for v in taxonomy) for t in triples})
    distinct = {"audience": {d for _, d, _ in vocab.audiences}, "style": {i for _, i, _ in vocab.styles},
                "noun": set(vocab.nouns), "verb": set(vocab.verbs), "adjective": set(vocab.adjectives),
                "extract": set(extracts)}
    for variable in declared:
        if variable in distinct:
            count *= len(distinct[variable])
    if "features" in declared:  # one or two different features, in the order drawn
        n = len({i for _, i, _ in vocab.features})
        count *= n + n * (n - 1)
    for pairs in (own or {}).values():
        count *= len({v for v, _ in pairs})
    return count


def _weighted_sample(rng: random.Random, items: list[tuple[str, str, float]], k: int) -> list[str]:
    pool = list(items)
    chosen = []
    for _ in range(min(k, len(pool))):
        pick = rng.choices(pool, weights=[w for *_, w in pool])[0]
        pool.remove(pick)
        chosen.append(pick[1])
    return chosen
