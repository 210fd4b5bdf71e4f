"""`textbook annotate`: LLM labels of educational value for a seeded sample of web documents.

sample N documents (seeded reservoir over every input) → render ``prompts/<annotate.template>.j2``
→ the generate stage's request engine (Dask, retries, resume, cost ledger) → parse the final line
"Educational score: N" strictly → ``RUN_DIR/annotations/part-*.parquet``. An answer that does not
end in a valid score line is kept with ``score`` null and an ``annotation_error``: failed, never guessed.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.classify.config import AnnotateConfig
from pipeline.config import Config, public_dict
from pipeline.errors import ClassifierError
from pipeline.generate.backends import Sampling
from pipeline.generate.journal import journal_dir
from pipeline.generate.render import PROMPTS_DIR, load_template
from pipeline.generate.runner import run_requests
from pipeline.io import (
    InputFile,
    check_writable,
    expand_inputs,
    iter_batches,
    read_json,
    read_shards,
    stable_hash,
    write_json,
)
from pipeline.lineage import check_resume, file_digests, fingerprint, read_fingerprint
from pipeline.progress import progress
from pipeline.rundir import RunDir, list_shards, manifest_path

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
    """Sample, label with the LLM, parse strictly; write ``RUN_DIR/annotations`` (resumable).

    Resumes only when the fingerprint (annotate section, the model and sampling it runs, seed,
    template and the input files' digests) matches the stored one; ``restart`` discards the old
    annotations. The requests go out in waves (:func:`wave_ends`); a wave whose share of
    unparseable answers is over ``annotate.max_failure_share`` stops the run (`ClassifierError`)
    before the next wave is paid for.
    """
    a = cfg.annotate
    files = expand_inputs(a.input) if a.input else []
    docs, counts = sample_documents(cfg)
    if docs.empty:
        raise ClassifierError(f"annotate.input: no non-empty '{a.text_column}' documents in "
                              f"{', '.join(a.input)}")
    if len(docs) < a.num_documents:
        print(f"annotate: {len(docs):,} of annotate.num_documents={a.num_documents:,} documents: "
              + short_sample(counts, a.num_documents), file=sys.stderr)
    requests, template = build_requests(cfg, docs)
    gen = cfg.generate
    # Labelling wants the rubric's own budget and deterministic decoding, not generation's.
    sampling = Sampling(max_tokens=a.max_tokens, temperature=a.temperature, top_p=gen.top_p)
    config = public_dict(cfg)  # what the manifest records: the sampling the requests ran with
    config["generate"].update(max_tokens=sampling.max_tokens, temperature=sampling.temperature)
    out_dir = RunDir(cfg.run_dir).annotations
    if not dry_run:
        check_writable(ClassifierError, out_dir)
    lineage = annotation_fingerprint(cfg, files, template.sha)
    manifest_fields = {"template": {"name": template.name, "sha": template.sha}, "sample": counts}
    engine = {"stage": "annotate", "run_dir": cfg.run_dir, "seed": cfg.seed, "workers": cfg.workers,
              "sampling": sampling, "config": config, "completion_column": "answer"}

    stored = read_fingerprint(out_dir / STATE_NAME) or read_fingerprint(manifest_path(out_dir))
    # --restart discards the old answers (never mixed with new ones); otherwise they must match
    discard = out_dir.exists() and (restart or not check_resume("the annotation run", stored, lineage, False,
                                                                 out_dir))
    if dry_run:
        # what a run would send: everything when --restart would discard what is on disk
        run_requests(gen, requests, out_dir / ".discarded" if discard else out_dir, scheduler=cfg.scheduler,
                     dry_run=True, **engine)
        print(f"first prompt:\n{requests['messages'].iloc[0][0]['content']}")
        return 0
    if discard:
        shutil.rmtree(out_dir)
    write_json({"lineage": lineage}, out_dir / STATE_NAME)  # before the first request: a killed run keeps it

    stop_reason = None
    first = a.failure_min_answers
    with shared_cluster(cfg.scheduler, cfg.workers, pending=has_pending(requests, out_dir)) as scheduler:
        for start, end in waves(requests, out_dir, gen.shard_size, first):
            summary = run_requests(gen, requests.iloc[:end], out_dir, scheduler=scheduler,
                                   postprocess=annotation_columns, manifest_fields=manifest_fields, **engine)
            # judged over at least `first` answers: a short wave is judged with the ones before it
            judged = requests["id"].iloc[max(0, min(start, end - first)):end]
            stop_reason = summary.stop_reason or failure_gate(out_dir, judged, a, end, len(requests))
            if stop_reason:
                break

    rows = read_shards(out_dir, ["score", "annotation_error"])
    if rows.empty:
        print("annotate: no answers written" + (f" ({stop_reason})" if stop_reason else ""))
        return 0
    scores = pd.to_numeric(rows["score"], errors="coerce")
    failed = int(scores.isna().sum())
    distribution = {str(int(k)): int(v) for k, v in sorted(Counter(scores.dropna()).items())}
    reasons = dict(Counter(rows["annotation_error"].dropna()))
    manifest = read_json(manifest_path(out_dir))
    # the engine saw one wave; the manifest describes the whole run
    manifest["config"] = config
    manifest["totals"].update(requests=len(requests), complete=len(rows) == len(requests))
    manifest["stop_reason"] = stop_reason
    manifest["annotations"] = {"scored": len(rows) - failed, "failed": failed, "failure_reasons": reasons,
                               "score_distribution": distribution}
    manifest["lineage"] = lineage
    manifest["outputs"] = file_digests(list_shards(out_dir), cfg.run_dir)
    write_json(manifest, manifest_path(out_dir))
    print(f"annotate: {len(rows) - failed} scored, {failed} failed (unparseable, kept with score null); "
          f"scores {distribution}")
    if stop_reason and stop_reason.startswith(FAILURE_GATE):
        raise ClassifierError(stop_reason)
    return 0


STATE_NAME = ".lineage.json"
"""The fingerprint of the annotations being written, saved before the first request."""
FAILURE_GATE = "annotate.max_failure_share"
WAVES = 10
"""After the first ``annotate.failure_min_answers`` documents, a run goes out in about this many
waves, each judged before the next is sent: a failure share that rises mid-run costs at most a
tenth of the run. (The engine stops only on its budget, so the stop is between its calls.)"""


def annotation_fingerprint(cfg: Config, files: list[InputFile], template_sha: str) -> dict[str, Any]:
    """What shapes the annotations: the annotate section (less its failure gate), the model and
    sampling the requests run with, the seed, the template and the content of the local inputs."""
    section = cfg.annotate.model_dump(mode="json", exclude={"max_failure_share", "failure_min_answers"})
    gen = cfg.generate
    config = {"annotate": section, "generate": {"backend": gen.backend, "model": gen.model, "top_p": gen.top_p},
              "seed": cfg.seed, "template_sha": template_sha}
    local = [f.path for f in files if not f.on_hub]
    inputs = file_digests(local, cfg.run_dir)
    # a Hub dataset has no local bytes to digest; its name is what can be checked
    inputs.update({f.path: "hub" for f in files if f.path not in local})
    return fingerprint(config, inputs)


@contextmanager
def shared_cluster(scheduler: str | None, workers: int | None, pending: bool = True) -> Iterator[str | None]:
    """The address of one cluster for every wave: ``scheduler``, or a LocalCluster of ``workers``
    started once, not per wave (and not at all when nothing is ``pending``: the engine then needs none)."""
    if scheduler or not pending:
        yield scheduler
        return
    from pipeline.cluster import local_cluster

    with local_cluster(workers) as cluster:
        yield cluster.scheduler_address


def has_pending(requests: pd.DataFrame, out_dir: Path) -> bool:
    """Whether some request is not yet written (or a killed run left a journal to compact)."""
    journal = journal_dir(out_dir)
    if journal.is_dir() and any(journal.iterdir()):
        return True
    return not set(requests["id"]) <= set(read_shards(out_dir, ["id"])["id"])


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


def waves(requests: pd.DataFrame, out_dir: Path, shard_size: int, first: int) -> list[tuple[int, int]]:
    """The waves of this run, the first one covering every shard already on disk."""
    written = [int(p.stem.split("-")[1]) for p in list_shards(out_dir)]
    resumed = min(len(requests), (max(written) + 1) * shard_size) if written else 0
    return wave_ends(len(requests), first, resumed)


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
