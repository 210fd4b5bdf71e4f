"""Downstream tasks: read each layout into multiple-choice items, draw few-shot examples, render prompts.

Every task becomes a list of :class:`Item` (a question, its choices, the gold index). Rendering
follows lm-evaluation-harness: in *cloze* form the context is the question and each continuation is
``" " + choice`` (the default target delimiter), scored by its log-likelihood; in *mc* form the
choices are listed under the question with letters and each continuation is ``" A"``, ``" B"``...
Few-shot examples are joined with a blank line, drawn with a seed from the task's few-shot split (or
from its own items, never the item itself), so the same bundle always renders the same prompts.
"""

from __future__ import annotations

import csv
import glob
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from pipeline.errors import PipelineError
from pipeline.eval.config import TaskConfig
from pipeline.io import expand_inputs, iter_rows
from pipeline.lineage import content_digest

LETTERS = "ABCDEFGHIJ"


class EvalError(PipelineError):
    """A task cannot be read or a checkpoint cannot be scored."""


@dataclass(frozen=True)
class Item:
    """One multiple-choice question: ``cloze`` is its context in cloze form (question framing included)."""

    question: str
    choices: tuple[str, ...]
    gold: int
    cloze: str


@dataclass
class Task:
    """A loaded task: the items to score, the few-shot pool, and the digest of what was read."""

    config: TaskConfig
    items: list[Item]
    fewshot_pool: list[Item]
    pool_is_items: bool
    source_digest: dict[str, str]

    def requests(self, seed: int) -> list[tuple[int, str, list[str]]]:
        """(item index, context, continuations) for every item, few-shot prefix included."""
        out = []
        for i, item in enumerate(self.items):
            shots = self.fewshot(i, seed)
            prefix = "".join(render_example(s, self.config.form) + "\n\n" for s in shots)
            context, continuations = render(item, self.config.form)
            out.append((i, prefix + context, continuations))
        return out

    def fewshot(self, index: int, seed: int) -> list[Item]:
        k = self.config.num_fewshot
        pool = [p for j, p in enumerate(self.fewshot_pool) if not (self.pool_is_items and j == index)]
        if k == 0 or not pool:
            return []
        rng = np.random.default_rng([seed, _name_seed(self.config.name), index])
        return [pool[j] for j in rng.choice(len(pool), size=min(k, len(pool)), replace=False)]


def render(item: Item, form: str) -> tuple[str, list[str]]:
    """(context, continuations) of an item in cloze or mc form."""
    if form == "mc":
        listing = "".join(f"{LETTERS[j]}. {c}\n" for j, c in enumerate(item.choices))
        return f"Question: {item.question}\n{listing}Answer:", [f" {LETTERS[j]}" for j in range(len(item.choices))]
    return item.cloze, [f" {c}" for c in item.choices]


def render_example(item: Item, form: str) -> str:
    context, continuations = render(item, form)
    return context + continuations[item.gold]


def load_task(config: TaskConfig, seed: int) -> Task:
    """Read a task's items (a seeded ``max_items`` subset) and its few-shot pool; errors name the task."""
    try:
        items, digest = _read(config, config.split)
        if not items:
            raise EvalError(f"no items in {config.path or config.hf} ({config.split})")
        if config.max_items is not None and len(items) > config.max_items:
            rng = np.random.default_rng([seed, _name_seed(config.name)])
            keep = np.sort(rng.choice(len(items), size=config.max_items, replace=False))
            items = [items[i] for i in keep]
        pool, pool_is_items = items, True
        if config.num_fewshot and config.fewshot_split:
            pool, pool_digest = _read(config, config.fewshot_split)
            digest.update({f"fewshot:{k}": v for k, v in pool_digest.items()})
            pool_is_items = False
        available = len(pool) - 1 if pool_is_items else len(pool)  # never an item as its own example
        if config.num_fewshot > available:
            where = f"fewshot_split {config.fewshot_split}" if not pool_is_items else "the task's own items"
            raise EvalError(f"num_fewshot={config.num_fewshot} but {where} give only {available} examples; "
                            "lower num_fewshot or give a larger fewshot_split")
    except PipelineError as e:
        raise EvalError(f"eval task {config.name!r}: {e}") from None
    return Task(config, items, pool, pool_is_items, digest)


def _name_seed(name: str) -> int:
    return xxhash.xxh32_intdigest(name.encode("utf-8"))


# --- reading ----------------------------------------------------------------------------------

def _read(config: TaskConfig, split: str) -> tuple[list[Item], dict[str, str]]:
    """Items and {source: digest}. ``split`` names a Hub split, or for local tasks the file (default: path)."""
    parse = PARSERS[config.format]
    if config.hf:
        rows, digest = _hub_rows(config, split)
    else:
        path = config.path if split == config.split else split
        rows, digest = _local_rows(config, str(path))
    items = []
    for where, row in rows:
        try:
            item = parse(row)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise EvalError(f"{where}: not a {config.format} row ({type(e).__name__}: {e})") from None
        if len(item.choices) < 2:
            raise EvalError(f"{where}: {len(item.choices)} choice(s); a multiple-choice item needs at least 2")
        items.append(item)
    return items, digest


def _local_rows(config: TaskConfig, path: str) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, str]]:
    """(where, row) of every row (``file:line``, 1-based, as other errors name them) and {file: digest}."""
    if config.format == "mmlu_csv":
        local = Path(path)
        files = sorted(glob.glob(str(local / "*.csv"))) if local.is_dir() else sorted(glob.glob(path))
        if not files:
            raise EvalError(f"{path}: no CSV files match")
        return [row for f in files for row in _mmlu_csv_rows(f)], {f: content_digest(f) for f in files}
    inputs = expand_inputs([path])
    rows = [row for source in inputs for row in iter_rows(source)]
    return rows, {s.path: content_digest(s.path) for s in inputs}


def _mmlu_csv_rows(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The original MMLU CSV (no header: question, A, B, C, D, letter) or a re-export with a header row."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for n, row in enumerate(reader):
            if n == 0 and row and row[0].strip().lower() == "question":
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) < 6:
                raise EvalError(f"{where}: expected question, four choices and an answer")
            yield where, {"question": row[0], "choices": row[1:-1], "answer": row[-1], "subject": Path(path).stem}


def _hub_rows(config: TaskConfig, split: str) -> tuple[Iterable[tuple[str, dict[str, Any]]], dict[str, str]]:
    import datasets

    try:
        ds = datasets.load_dataset(config.hf, config.subset, split=split)
    except Exception as e:  # offline, unknown id or split: one line naming the task and the way out
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EvalError(f"cannot load {config.hf} ({split}) from the Hub: {first}; give the task a local path")\
            from None
    name = f"hf://{config.hf}" + (f"/{config.subset}" if config.subset else "") + f":{split}"
    return ((f"{name}: row {n}", row) for n, row in enumerate(ds, 1)), \
        {name: str(getattr(ds, "_fingerprint", "") or len(ds))}


# --- layouts ----------------------------------------------------------------------------------

def _answer_index(answer: Any, n: int) -> int:
    """A gold answer given as an index (0-based int or digit string) or a letter."""
    if isinstance(answer, (int, np.integer)):
        index = int(answer)
    else:
        text = str(answer).strip()
        index = int(text) if text.isdigit() else LETTERS.index(text.upper())
    if not 0 <= index < n:
        raise ValueError(f"answer {answer!r} is not one of {n} choices")
    return index


def _mc_jsonl(row: dict[str, Any]) -> Item:
    choices = tuple(str(c) for c in row["choices"])
    return Item(str(row["query"]), choices, _answer_index(row["gold"], len(choices)), str(row["query"]))


def _mmlu(row: dict[str, Any]) -> Item:
    choices = tuple(str(c) for c in row["choices"])
    q = str(row["question"]).strip()
    return Item(q, choices, _answer_index(row["answer"], len(choices)), f"Question: {q}\nAnswer:")


def _labelled(question: str, choices: dict[str, Any], key: Any) -> Item:
    texts, labels = [str(t) for t in choices["text"]], [str(x) for x in choices["label"]]
    return Item(question, tuple(texts), labels.index(str(key)), f"Question: {question}\nAnswer:")


def _arc(row: dict[str, Any]) -> Item:
    return _labelled(str(row["question"]).strip(), row["choices"], row["answerKey"])


def _commonsenseqa(row: dict[str, Any]) -> Item:
    return _labelled(str(row["question"]).strip(), row["choices"], row["answerKey"])


def _openbookqa(row: dict[str, Any]) -> Item:
    item = _labelled(str(row["question_stem"]).strip(), row["choices"], row["answerKey"])
    return Item(item.question, item.choices, item.gold, item.question)  # lm-eval: the stem alone is the context


def _hellaswag(row: dict[str, Any]) -> Item:
    ctx = f"{row['ctx_a']} {str(row['ctx_b']).capitalize()}" if "ctx_a" in row else str(row["ctx"])
    context = _clean_hellaswag(f"{row['activity_label']}: {ctx}")
    endings = tuple(_clean_hellaswag(str(e)) for e in row["endings"])
    return Item(context, endings, _answer_index(row["label"], len(endings)), context)


def _clean_hellaswag(text: str) -> str:
    # WikiHow rows carry bracketed markers ("[title]", "[header]") and doubled spaces.
    text = text.strip().replace(" [title]", ". ")
    while "[" in text and "]" in text[text.index("["):]:
        start = text.index("[")
        text = text[:start] + text[text.index("]", start) + 1:]
    return " ".join(text.split())


def _piqa(row: dict[str, Any]) -> Item:
    q = str(row["goal"]).strip()
    choices = (str(row["sol1"]), str(row["sol2"]))
    return Item(q, choices, _answer_index(row["label"], 2), f"Question: {q}\nAnswer:")


PARSERS = {"mc_jsonl": _mc_jsonl, "mmlu_csv": _mmlu, "mmlu": _mmlu, "arc": _arc, "hellaswag": _hellaswag,
           "piqa": _piqa, "openbookqa": _openbookqa, "commonsenseqa": _commonsenseqa}

# The accuracy a task is centered on: length-normalised where choices differ much in length
# (lm-eval and DCLM report acc_norm for these), plain accuracy otherwise.
NORMALISED = {"arc", "hellaswag", "piqa", "openbookqa"}
