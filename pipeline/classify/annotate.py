"""`textbook annotate`: LLM labels of educational value for a seeded sample of web documents.

sample N documents (seeded reservoir over every input) → render ``prompts/<annotate.template>.j2``
→ the request engine (pipeline.llm: waves, retries, resume, cost ledger) → parse the final line
"Educational score: N" strictly → ``RUN_DIR/annotations/part-*.parquet``. An answer that does not
end in a valid score line is kept with ``score`` null and an ``annotation_error``: failed, never guessed.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.classify.config import AnnotateConfig
from pipeline.config import Config, public_dict
from pipeline.errors import ClassifierError
from pipeline.generate.config import GenerateConfig
from pipeline.generate.render import PROMPTS_DIR, load_template
from pipeline.io import InputFile, check_writable, expand_inputs, iter_batches, read_shards, stable_hash
from pipeline.lineage import file_digests, fingerprint
from pipeline.llm.backends import Sampling
from pipeline.llm.run import run_requests
from pipeline.llm.spec import RunSpec
from pipeline.progress import progress
from pipeline.rundir import RunDir

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


def sample_documents(a: AnnotateConfig, seed: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """A seeded uniform sample of ``annotate.num_documents`` non-empty documents, one pass over the input.

    Returns ``doc_id``, ``text``, ``source`` and counts (``seen``, ``skipped_empty``, ``duplicates``).
    The same inputs and seed give the same sample, which is what makes a rerun resume.
    """
    if not a.input:
        raise ClassifierError("config key 'annotate.input': empty; give web text paths (Parquet/JSONL) "
                              "or a Hugging Face dataset id")
    columns = [a.text_column] + ([a.id_column] if a.id_column else [])
    rng = np.random.default_rng(seed)
    reservoir: list[tuple[Any, str, str]] = []
    seen = skipped = 0
    with progress(desc="sample", unit="doc") as bar:
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


def short_sample(counts: dict[str, int], wanted: int) -> str:
    """Why a sample holds fewer documents than asked: what the inputs hold, and the duplicates dropped."""
    reasons = []
    if counts["seen"] < wanted:
        reasons.append(f"the inputs hold {counts['seen']:,} non-empty ({counts['skipped_empty']:,} empty skipped)")
    if counts["duplicates"]:
        reasons.append(f"{counts['duplicates']:,} drawn twice (the same id, or the same text without one) "
                       "counted once")
    return "; ".join(reasons)


def build_requests(a: AnnotateConfig, gen: GenerateConfig, docs: pd.DataFrame) -> tuple[pd.DataFrame, Any]:
    """One chat request per document; the row key covers document, template version and model.

    ``text`` (the whole document, what the classifier trains on) passes through to the output; the
    LLM's completion goes to ``answer``.
    """
    prompts_dir = Path(gen.prompts_dir) if gen.prompts_dir else PROMPTS_DIR
    path = prompts_dir / f"{a.template}.j2"
    if not path.is_file():
        raise ClassifierError(f"config key 'annotate.template': no template {path}")
    template = load_template(path, ["text"])
    max_chars = a.max_chars
    prompts = [template.render({"text": t[:max_chars]}) for t in docs["text"]]
    ids = [stable_hash({"doc": d, "template": template.sha, "model": gen.model}) for d in docs["doc_id"]]
    requests = docs.assign(id=ids, messages=[[{"role": "user", "content": p}] for p in prompts],
                           template=template.name, template_sha=template.sha)
    return requests[["id", "messages", "doc_id", "text", "source", "template", "template_sha"]], template


def annotate(cfg: Config, dry_run: bool = False, restart: bool = False, **_: Any) -> int:
    """Sample, label with the LLM, parse strictly; write ``RUN_DIR/annotations`` (resumable).

    Resumes only when the fingerprint (annotate section, the model and sampling it runs, seed,
    template and the input files' digests) matches the stored one; ``restart`` discards the old
    annotations (kept in the manifest's ``discarded_runs``) and asks again. The requests go out in waves (:func:`wave_ends`); a wave whose share of
    unparseable answers is over ``annotate.max_failure_share`` stops the run (`ClassifierError`)
    before the next wave is paid for.
    """
    a = cfg.annotate
    files = expand_inputs(a.input) if a.input else []
    docs, counts = sample_documents(a, cfg.seed)
    if docs.empty:
        raise ClassifierError(f"annotate.input: no non-empty '{a.text_column}' documents in "
                              f"{', '.join(a.input)}")
    if len(docs) < a.num_documents:
        print(f"annotate: {len(docs):,} of annotate.num_documents={a.num_documents:,} documents: "
              + short_sample(counts, a.num_documents), file=sys.stderr)
    gen = cfg.generate
    requests, template = build_requests(a, gen, docs)
    # Labelling wants the rubric's own budget and deterministic decoding, not generation's.
    sampling = Sampling(max_tokens=a.max_tokens, temperature=a.temperature, top_p=gen.top_p)
    config = public_dict(cfg)  # what the manifest records: the sampling the requests ran with
    config["generate"].update(max_tokens=sampling.max_tokens, temperature=sampling.temperature)
    out_dir = RunDir(cfg.run_dir).annotations
    if not dry_run:  # before a request is paid for
        check_writable(ClassifierError, out_dir)
    lineage = annotation_fingerprint(a, gen, cfg.seed, cfg.run_dir, files, template.sha)
    spec = RunSpec("annotate", out_dir, cfg.run_dir, gen, seed=cfg.seed, scheduler=cfg.scheduler,
                   workers=cfg.workers, sampling=sampling, completion_column="answer",
                   postprocess=annotation_columns, waves=FailureGate(a), lineage=lineage,
                   label="the annotation run", restart_discards="all", config=config,
                   manifest_fields={"template": {"name": template.name, "sha": template.sha}, "sample": counts},
                   describe=lambda summary, previous: annotation_counts(summary.out_dir))
    summary = run_requests(spec, requests, restart=restart, dry_run=dry_run)
    if dry_run:
        print(f"first prompt:\n{requests['messages'].iloc[0][0]['content']}")
        return 0
    counted = summary.described.get("annotations")
    if counted is None:
        print("annotate: no answers written" + (f" ({summary.stop_reason})" if summary.stop_reason else ""))
        return 0
    print(f"annotate: {counted['scored']} scored, {counted['failed']} failed (unparseable, kept with score null); "
          f"scores {counted['score_distribution']}")
    if summary.stop_reason and summary.stop_reason.startswith(FAILURE_GATE):
        raise ClassifierError(summary.stop_reason)
    return 0


def annotation_counts(out_dir: Path) -> dict[str, Any]:
    """The manifest's ``annotations``: scored and failed answers, why they failed, the score distribution."""
    rows = read_shards(out_dir, ["score", "annotation_error"])
    if rows.empty:
        return {}
    scores = pd.to_numeric(rows["score"], errors="coerce")
    failed = int(scores.isna().sum())
    distribution = {str(int(k)): int(v) for k, v in sorted(Counter(scores.dropna()).items())}
    reasons = dict(Counter(rows["annotation_error"].dropna()))
    return {"annotations": {"scored": len(rows) - failed, "failed": failed, "failure_reasons": reasons,
                            "score_distribution": distribution}}


FAILURE_GATE = "annotate.max_failure_share"
WAVES = 10
"""After the first ``annotate.failure_min_answers`` documents, a run goes out in about this many
waves, each judged before the next is sent: a failure share that rises mid-run costs at most a
tenth of the run."""


def annotation_fingerprint(a: AnnotateConfig, gen: GenerateConfig, seed: int, run_dir: Path,
                           files: list[InputFile], template_sha: str) -> dict[str, Any]:
    """What shapes the annotations: the annotate section (less its failure gate), the model and
    sampling the requests run with, the seed, the template and the content of the local inputs."""
    section = a.model_dump(mode="json", exclude={"max_failure_share", "failure_min_answers"})
    config = {"annotate": section, "generate": {"backend": gen.backend, "model": gen.model, "top_p": gen.top_p},
              "seed": seed, "template_sha": template_sha}
    local = [f.path for f in files if not f.on_hub]
    inputs = file_digests(local, run_dir)
    # a Hub dataset has no local bytes to digest; its name is what can be checked
    inputs.update({f.path: "hub" for f in files if f.path not in local})
    return fingerprint(config, inputs)


def wave_ends(total: int, first: int, resumed: int = 0) -> list[tuple[int, int]]:
    """``(start, end)`` request ranges: ``first`` documents, then steps of ``max(first, total / WAVES)``.

    A run resumed with ``resumed`` rows' shards on disk starts with one wave up to there: the
    engine must see every request it already wrote.
    """
    step = max(first, -(-total // WAVES))
    ends = [min(total, max(first, resumed))]
    while ends[-1] < total:
        ends.append(min(total, ends[-1] + step))
    return list(zip([0, *ends[:-1]], ends, strict=True))


class FailureGate:
    """The engine's wave gate for annotate: the first ``failure_min_answers`` documents, then tenths
    of the run, each judged by :func:`failure_gate` before the next is sent."""

    def __init__(self, a: AnnotateConfig) -> None:
        self.a = a

    def waves(self, total: int, resumed: int) -> list[tuple[int, int]]:
        return wave_ends(total, self.a.failure_min_answers, resumed)

    def judge(self, out_dir: Path, requests: pd.DataFrame, start: int, end: int) -> str | None:
        # judged over at least `failure_min_answers` answers: a short wave with the ones before it
        first = self.a.failure_min_answers
        judged = requests["id"].iloc[max(0, min(start, end - first)):end]
        return failure_gate(out_dir, judged, self.a, end, len(requests))


def failure_gate(out_dir: Path, ids: pd.Series, a: AnnotateConfig, end: int, total: int) -> str | None:
    """Why the run stops: the share of unparseable answers among ``ids`` is over the limit (else None)."""
    rows = read_shards(out_dir, ["id", "score", "annotation_error", "finish_reason"])
    rows = rows[rows["id"].isin(set(ids))]
    if a.max_failure_share >= 1 or rows.empty:
        return None
    failed = rows[rows["score"].isna()]
    if len(failed) <= a.max_failure_share * len(rows):
        return None
    reason, count = Counter(failed["annotation_error"].fillna("no answer")).most_common(1)[0]
    truncated = int((failed["finish_reason"] == "length").sum())
    hint = (f"{truncated} answers were cut at annotate.max_tokens={a.max_tokens}, raise it"
            if truncated > len(failed) / 2 else "check generate.model and the annotate.template prompt")
    left = total - end
    return (f"{FAILURE_GATE}={a.max_failure_share:g} exceeded: {len(failed)} of {len(rows)} answers "
            f"({len(failed) / len(rows):.0%}) in documents {end - len(ids) + 1}-{end} are unparseable "
            f"(most often: {reason}, {count}x); " + (f"stopped before sending the other {left} requests; "
                                                      if left else "")
            + f"{hint}, then rerun with --restart (a failed answer is kept, never asked again)")
