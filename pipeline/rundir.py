"""The run directory, spelled once: every folder and file a stage writes under ``run_dir``, the shard
naming, where manifests live, and the column names stages and the hub share.

    RUN_DIR/
      generated/      part-*.parquet  manifest.json        (textbook generate)
      annotations/    part-*.parquet  manifest.json        (textbook annotate)
      classifier/     edu_fasttext.bin report.json report.png manifest.json  rejected/
      filtered/       part-*.parquet  rejected/  scored/  stats.json report.png manifest.json
        scored/         part-*.parquet  part-*.json (each shard's entry)  manifest.json (merged once)
        dedup/          <pass>/*.arrow  <pass>/manifest.json  (the dedup passes; gone when the outputs are)
      tokenizer/      manifest.json + PreTrainedTokenizerFast files
      tokens/         packed token shards (a cache)
      checkpoints/    phase1/ phase2/ sft/  (save_pretrained + manifest.json train_summary.json ...
                        state/step-NNNNNN/ lineage.json: the resumable states)
      eval/           <checkpoint>-<digest>.json  scores.png
      compare/        <arm>/seed-<k>/  compare.json compare.md compare.png
      card/           README.md  model/README.md  manifest.json
      push/ push_model/ pushed.json  web_sample/
      .lock           held by the stage that runs (pipeline.runlock): one writer at a time

Hidden beside a stage's outputs, the state a rerun resumes from: ``.lineage.json`` (the fingerprint the
rows on disk were built from), ``.ledger.json`` and ``.journal/`` (the request engine's paid requests
and unfinished shards), ``.batches.json`` (batches submitted to a Batch API). The filter's dedup passes
and its staged outputs live in ``filtered/dedup/`` until the outputs are in place.

A stage asks this module for a path (``RunDir(cfg.run_dir).filtered``) rather than joining strings,
so a layout change is one edit here and a reader finds every artifact in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from filters.base import TEXT as TEXT  # the text column: filters own it, stages share it

# --- shards and manifests ---------------------------------------------------------------------

SHARD_GLOB = "part-*.parquet"
MANIFEST = "manifest.json"


def shard_path(folder: Path, index: int) -> Path:
    """``folder/part-NNNNN.parquet``: the one shard naming every stage uses."""
    return Path(folder) / f"part-{index:05d}.parquet"


def list_shards(folder: Path) -> list[Path]:
    """A folder's shards in order (none when it does not exist)."""
    return sorted(Path(folder).glob(SHARD_GLOB))


def manifest_path(folder: Path) -> Path:
    """Where a stage folder's manifest lives."""
    return Path(folder) / MANIFEST


def shard_entry_path(folder: Path, index: int) -> Path:
    """``folder/part-NNNNN.json``: what one shard was made from, written beside it by the task that made it."""
    return Path(folder) / f"part-{index:05d}.json"


def block_path(folder: Path, index: int, kind: str = "part") -> Path:
    """``folder/<kind>-NNNNN.arrow``: a file of a dedup pass, one per task or one per partition."""
    return Path(folder) / f"{kind}-{index:05d}.arrow"


# --- hidden state inside a stage's folder (what a rerun resumes from) ---------------------------

LINEAGE_FILE = ".lineage.json"
"""The fingerprint the rows on disk were built from, written before the first request of a run."""
LEDGER_FILE = ".ledger.json"
"""What was paid for but is not a row on disk: requests lost to kills, and the ledgers of discarded runs."""
BATCHES_FILE = ".batches.json"
"""The durable record of the batches submitted to a provider's Batch API: row ids, input file, batch id."""
JOURNAL_DIR = ".journal"
"""The journals of a request engine's unfinished shards."""


def lineage_path(folder: Path) -> Path:
    return Path(folder) / LINEAGE_FILE


def ledger_path(folder: Path) -> Path:
    return Path(folder) / LEDGER_FILE


def batches_path(folder: Path) -> Path:
    return Path(folder) / BATCHES_FILE


def journal_dir(folder: Path) -> Path:
    return Path(folder) / JOURNAL_DIR


def journal_path(folder: Path, index: int) -> Path:
    """``folder/.journal/part-NNNNN.jsonl``: named like the shard it becomes."""
    return journal_dir(folder) / shard_path("", index).with_suffix(".jsonl").name



# --- columns shared between stages and the hub ------------------------------------------------

ID = "id"
"""The row key (generate) or document id (filter)."""
SOURCE = "source"
"""Where a filtered document came from (an input's name, or ``generated``)."""
GENERATED_SOURCE = "generated"
REASON = "filter_reason"
"""Why ``filtered/rejected/`` holds a document: ``exact_dup``, ``near_dup``, ``decontam:gsm8k``..."""
EDU_SCORE = "edu_score"
TEMPLATE = "template"
MESSAGES = "messages"
"""A conversation as ``[{role, content}]`` (the TRL convention)."""
CONVERSATION = "conversation"
"""The ``template`` of generated Student/Teacher conversations (the chat source of SFT, the card's chats)."""
FLAGS = "flags"
"""A generated row's quality flags (``pipeline.generate.flags``)."""
UNUSABLE_FLAGS = ("truncated", "empty", "refusal", "repetitive")
"""Flags that keep a generated row out of training and of the published SFT set."""

# --- the run directory ------------------------------------------------------------------------

PHASES = ("phase1", "phase2", "sft")
CLASSIFIER_MODEL = "edu_fasttext.bin"
CLASSIFIER_REPORT, CLASSIFIER_FIGURE = "report.json", "report.png"
"""In classifier/ (an accepted model) or classifier/rejected/ (a refused one): its metrics and figure."""


@dataclass(frozen=True)
class RunDir:
    """The folders and files of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def lock(self) -> Path:
        """The file a running stage holds locked (``pipeline.runlock``)."""
        return self.root / ".lock"

    # generate and annotate
    @property
    def generated(self) -> Path:
        return self.root / "generated"

    @property
    def annotations(self) -> Path:
        return self.root / "annotations"

    # the edu classifier
    @property
    def classifier(self) -> Path:
        return self.root / "classifier"

    @property
    def classifier_model(self) -> Path:
        return self.classifier / CLASSIFIER_MODEL

    @property
    def classifier_report(self) -> Path:
        return self.classifier / CLASSIFIER_REPORT

    @property
    def classifier_figure(self) -> Path:
        return self.classifier / CLASSIFIER_FIGURE

    @property
    def classifier_rejected(self) -> Path:
        return self.classifier / "rejected"

    # filter
    @property
    def filtered(self) -> Path:
        return self.root / "filtered"

    @property
    def rejected(self) -> Path:
        return self.filtered / "rejected"

    @property
    def scored(self) -> Path:
        return self.filtered / "scored"

    @property
    def dedup(self) -> Path:
        """The dedup passes' files and records (``pipeline.filter.passes``), while a run is under way."""
        return self.filtered / "dedup"

    @property
    def filter_stats(self) -> Path:
        return self.filtered / "stats.json"

    @property
    def filter_report(self) -> Path:
        return self.filtered / "report.png"

    # train
    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, phase: str) -> Path:
        """``checkpoints/<phase>/`` (phase1, phase2 or sft): save_pretrained weights and the phase's files."""
        return self.checkpoints / phase

    # eval and compare
    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def eval_result(self, name: str, digest: str) -> Path:
        """``eval/<name>-<digest>.json``: results are keyed by the checkpoint's identity, not its folder's
        name (another model named ``sft`` must not replace this run's result)."""
        return self.eval / f"{name}-{digest}.json"

    @property
    def eval_figure(self) -> Path:
        """``eval/scores.png``: every evaluated checkpoint's score (``textbook eval`` redraws it)."""
        return self.eval / "scores.png"

    def eval_results(self) -> list[Path]:
        """Every ``eval/<checkpoint>-<digest>.json`` written so far, by name."""
        return sorted(self.eval.glob("*.json")) if self.eval.is_dir() else []

    @property
    def compare(self) -> Path:
        return self.root / "compare"

    @property
    def compare_table(self) -> Path:
        """The data A/B: per arm the score and bpb over seeds, and the differences (``textbook compare``)."""
        return self.compare / "compare.json"

    @property
    def compare_report(self) -> Path:
        return self.compare / "compare.md"

    @property
    def compare_figure(self) -> Path:
        return self.compare / "compare.png"

    def compare_arm(self, arm: str, seed_index: int) -> Path:
        return self.compare / arm / f"seed-{seed_index}"

    # publish
    @property
    def card(self) -> Path:
        return self.root / "card"

    @property
    def push(self) -> Path:
        return self.root / "push"

    @property
    def push_model(self) -> Path:
        return self.root / "push_model"

    @property
    def pushed(self) -> Path:
        return self.root / "pushed.json"

    @property
    def web_sample(self) -> Path:
        return self.root / "web_sample"

    @property
    def installed_docs(self) -> Path:
        """The demo's web text with no Hub: the documentation installed on this machine."""
        return self.web_sample / "installed-docs.parquet"

    @property
    def web_sources(self) -> Path:
        """File name in ``web_sample/`` -> what it holds (the demo writes it, the card reads it)."""
        return self.web_sample / "sources.json"


# Files inside a checkpoint folder.
TRAIN_SUMMARY = "train_summary.json"
METRICS = "metrics.jsonl"
LOSS_FIGURE = "loss.png"
MODEL_CONFIG = "config.json"
"""The model config ``save_pretrained`` writes: a checkpoint folder that has it holds a trained model."""
STATE = "state"
"""In a phase folder: the resumable states ``step-NNNNNN/`` and their ``lineage.json``."""
STATE_LINEAGE = "lineage.json"
"""In the state folder: ``{"lineage": fingerprint}`` of the run its states belong to."""


def state_dir(phase_dir: Path) -> Path:
    """``<phase dir>/state/``: the resumable states and their lineage."""
    return Path(phase_dir) / STATE


def state_lineage(phase_dir: Path) -> Path:
    return state_dir(phase_dir) / STATE_LINEAGE


def state_path(folder: Path, step: int) -> Path:
    """``folder/step-NNNNNN``: the state saved after ``step`` steps."""
    return Path(folder) / f"step-{step:06d}"


def list_states(folder: Path) -> list[Path]:
    """The complete states in a state folder (each holds its ``state.pt``), oldest first."""
    return sorted(p for p in Path(folder).glob("step-*") if (p / "state.pt").exists())
