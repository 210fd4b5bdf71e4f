"""`textbook annotate`: LLM labels of educational value for a seeded sample of web documents.

sample N documents (seeded reservoir over every input) → render ``prompts/<annotate.template>.j2``
→ the generate stage's request engine (Dask, retries, resume, cost ledger) → parse the final line
"Educational score: N" strictly → ``RUN_DIR/annotations/part-*.parquet``. An answer that does not
end in a valid score line is kept with ``score`` null and an ``annotation_error``: failed, never guessed.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.config import Config
from pipeline.errors import ClassifierError
from pipeline.generate.render import PROMPTS_DIR, load_template
from pipeline.generate.runner import run_requests
from pipeline.io import expand_inputs, iter_batches, read_json, read_shards, stable_hash, write_json

# The whole last line, nothing else: "Educational score: 4" (markdown bold and a final period tolerated).
_SCORE_LINE = re.compile(r"^\**\s*educational score\s*:\s*\**\s*([0-5])\s*\**\s*\.?\s*\**$", re.IGNORECASE)
_SCORE_ANYWHERE = re.compile(r"educational score", re.IGNORECASE)


def parse_score(answer: Any) -> dict[str, Any]:
    """``score`` (0-5 as a float, or None), ``justification`` and ``annotation_error`` of one LLM answer.

    Contract: the score is read only from the answer's last non-empty line, which must be
    "Educational score: N" with N an integer 0-5; anything else (no score line, a score mid-answer,
    "3.5", "4/5", "6", a second score line) gives ``score=None`` and a reason. Never raises.
    """
    if not isinstance(answer, str) or not answer.strip():
        return {"score": None, "justification": None, "annotation_error": "empty answer"}
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    match = _SCORE_LINE.match(lines[-1])
    if match is None:
        reason = ("last line is not 'Educational score: N' (N an integer 0-5)"
                  if _SCORE_ANYWHERE.search(answer) else "no 'Educational score: N' line")
        return {"score": None, "justification": answer.strip()[:2000], "annotation_error": reason}
    if any(_SCORE_ANYWHERE.search(line) for line in lines[:-1]):
        return {"score": None, "justification": "\n".join(lines[:-1]),
                "annotation_error": "more than one score line"}
    return {"score": float(match.group(1)), "justification": "\n".join(lines[:-1]), "annotation_error": None}


def annotation_columns(row: dict[str, Any]) -> dict[str, Any]:
    """The request engine's ``postprocess``: ``score``, ``justification``, ``annotation_error`` of ``answer``."""
    return parse_score(row.get("answer"))


def sample_documents(cfg: Config) -> tuple[pd.DataFrame, dict[str, int]]:
    """A seeded uniform sample of ``annotate.num_documents`` non-empty documents, one pass over the input.

    Returns ``doc_id``, ``text``, ``source`` and counts (``seen``, ``skipped_empty``, ``duplicates``).
    The same inputs and seed give the same sample, which is what makes a rerun resume.
    """
    a = cfg.annotate
    if not a.input:
        raise ClassifierError("config key 'annotate.input': empty; give web text paths (Parquet/JSONL) "
                              "or a Hugging Face dataset id")
    columns = [a.text_column] + ([a.id_column] if a.id_column else [])
    rng = np.random.default_rng(cfg.seed)
    reservoir: list[tuple[Any, str, str]] = []
    seen = skipped = 0
    with tqdm(desc="sample", unit="doc") as bar:
        for f in expand_inputs(a.input):
            for batch in iter_batches(f, columns=columns):
                ids = batch[a.id_column].tolist() if a.id_column else [None] * len(batch)
                for doc_id, text in zip(ids, batch[a.text_column].tolist(), strict=True):
                    if not isinstance(text, str) or not text.strip():
                        skipped += 1
                        continue
                    # Algorithm R: after i documents each one is kept with probability N / i.
                    if len(reservoir) < a.num_documents:
                        reservoir.append((doc_id, text, f.path))
                    else:
                        j = int(rng.integers(0, seen + 1))
                        if j < a.num_documents:
                            reservoir[j] = (doc_id, text, f.path)
                    seen += 1
                bar.update(len(batch))
    docs = pd.DataFrame(reservoir, columns=["doc_id", "text", "source"])
    docs["doc_id"] = [str(i) if i is not None else stable_hash(t) for i, t in zip(docs["doc_id"], docs["text"],
                                                                                  strict=True)]
    before = len(docs)
    docs = docs.drop_duplicates("doc_id").reset_index(drop=True)
    return docs, {"seen": seen, "skipped_empty": skipped, "duplicates": before - len(docs)}


def build_requests(cfg: Config, docs: pd.DataFrame) -> tuple[pd.DataFrame, Any]:
    """One chat request per document; the row key covers document, template version and model.

    ``text`` (the whole document, what the classifier trains on) passes through to the output; the
    LLM's completion goes to ``answer``.
    """
    prompts_dir = Path(cfg.generate.prompts_dir) if cfg.generate.prompts_dir else PROMPTS_DIR
    path = prompts_dir / f"{cfg.annotate.template}.j2"
    if not path.is_file():
        raise ClassifierError(f"config key 'annotate.template': no template {path}")
    template = load_template(path, ["text"])
    max_chars = cfg.annotate.max_chars
    prompts = [template.render({"text": t[:max_chars]}) for t in docs["text"]]
    ids = [stable_hash({"doc": d, "template": template.sha, "model": cfg.generate.model}) for d in docs["doc_id"]]
    requests = docs.assign(id=ids, messages=[[{"role": "user", "content": p}] for p in prompts],
                           template=template.name, template_sha=template.sha)
    return requests[["id", "messages", "doc_id", "text", "source", "template", "template_sha"]], template


def annotate(cfg: Config, dry_run: bool = False, restart: bool = False, **_: Any) -> int:
    """Sample, label with the LLM, parse strictly; write ``RUN_DIR/annotations`` (resumable)."""
    docs, counts = sample_documents(cfg)
    if docs.empty:
        raise ClassifierError(f"annotate.input: no non-empty '{cfg.annotate.text_column}' documents in "
                              f"{', '.join(cfg.annotate.input)}")
    requests, template = build_requests(cfg, docs)
    # Labelling wants the rubric's own budget and deterministic decoding, not generation's.
    gen = cfg.generate.model_copy(update={"max_tokens": cfg.annotate.max_tokens,
                                          "temperature": cfg.annotate.temperature})
    run_cfg = cfg.model_copy(update={"generate": gen})
    out_dir = Path(cfg.run_dir) / "annotations"
    summary = run_requests(run_cfg, requests, out_dir, stage="annotate", postprocess=annotation_columns,
                           completion_column="answer", dry_run=dry_run, manifest_fields={
                               "template": {"name": template.name, "sha": template.sha},
                               "sample": counts})
    if dry_run or summary.rows == 0:
        print(f"first prompt:\n{requests['messages'].iloc[0][0]['content']}")
        return 0
    rows = read_shards(out_dir, ["score", "annotation_error"])
    scores = pd.to_numeric(rows["score"], errors="coerce")
    failed = int(scores.isna().sum())
    distribution = {str(int(k)): int(v) for k, v in sorted(Counter(scores.dropna()).items())}
    reasons = dict(Counter(rows["annotation_error"].dropna()))
    manifest = read_json(out_dir / "manifest.json")
    manifest["annotations"] = {"scored": len(rows) - failed, "failed": failed, "failure_reasons": reasons,
                               "score_distribution": distribution}
    write_json(manifest, out_dir / "manifest.json")
    print(f"annotate: {len(rows) - failed} scored, {failed} failed (unparseable, kept with score null); "
          f"scores {distribution}")
    return 0
