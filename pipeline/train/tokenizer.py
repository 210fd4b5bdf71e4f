"""The run's tokenizer: a byte-level BPE trained on a sample of the phase mixtures, or a pretrained one.

Either way it is saved as a ``PreTrainedTokenizerFast`` in ``RUN_DIR/tokenizer/`` with BOS/EOS/pad,
the ChatML tokens and a chat template, so checkpoints load with ``AutoTokenizer``. Its manifest
holds its lineage (:func:`tokenizer_fingerprint`): a rerun reuses it only while that matches
(:func:`ensure_tokenizer`); later phases use the copy saved with the previous phase's weights.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pipeline.errors import PipelineError, TrainError, first_line
from pipeline.io import atomic_dir, build_manifest, stable_hash, write_json
from pipeline.lineage import check_resume, file_digests, fingerprint, read_fingerprint
from pipeline.progress import note
from pipeline.rundir import TEXT, RunDir, manifest_path
from pipeline.sources import read_source, source_files, source_parents
from pipeline.train.config import TrainConfig
from pipeline.train.distributed import Dist, barrier

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IM_START, IM_END]
BYTE_ALPHABET = 256

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def check_vocab_size(vocab_size: int) -> None:
    """TrainError unless a byte-level BPE of ``vocab_size`` has room for every byte and special token."""
    minimum = BYTE_ALPHABET + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise TrainError(f"config key 'train.tokenizer.vocab_size': {vocab_size} is too small for "
                         f"{BYTE_ALPHABET} byte symbols + {len(SPECIAL_TOKENS)} special tokens "
                         f"(need at least {minimum})")


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` (special tokens included) on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[IM_START, IM_END])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_pretrained(name_or_path: str) -> PreTrainedTokenizerBase:
    """A pretrained tokenizer, completed with BOS/EOS/pad and a ChatML template where it lacks them."""
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise TrainError(f"config key 'train.tokenizer.pretrained': cannot load {name_or_path!r}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(tok, PreTrainedTokenizerFast):  # documents are encoded by its Rust backend
        raise TrainError(f"config key 'train.tokenizer.pretrained': {name_or_path!r} has no fast "
                         f"(tokenizer.json) tokenizer")
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    if tok.bos_token is None:
        tok.add_special_tokens({"bos_token": tok.eos_token})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD})
    if not tok.chat_template:
        tok.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
        tok.chat_template = CHAT_TEMPLATE
    return tok


def token_bytes(tok: PreTrainedTokenizerBase) -> np.ndarray:
    """UTF-8 byte length of every token id (0 for special tokens): the denominator of bits per byte."""
    from tokenizers import pre_tokenizers

    byte_of = {ch: 1 for ch in pre_tokenizers.ByteLevel.alphabet()}
    special = set(tok.all_special_ids)
    vocab = tok.get_vocab()
    out = np.zeros(max(len(tok), max(vocab.values()) + 1), dtype=np.int64)
    byte_level = all(ch in byte_of for t in list(vocab)[:200] for ch in t)
    for piece, i in vocab.items():
        if i in special:
            continue
        # byte-level pieces map one char to one byte; others are decoded (exact for whole characters)
        out[i] = len(piece) if byte_level else len(tok.convert_tokens_to_string([piece]).encode("utf-8"))
    return out


# --- the run's tokenizer: reused while its lineage holds ------------------------------------

def ensure_tokenizer(t: TrainConfig, run_dir: Path, seed: int, d: Dist, restart: bool = False,
                     config: dict[str, Any] | None = None):
    """RUN_DIR/tokenizer/, trained (rank 0) on a sample of the phase mixtures unless it exists.

    Its ``manifest.json`` holds the tokenizer's lineage (``train.tokenizer``, the sample's sources
    and the digests of their shards); an existing tokenizer is reused only when that still matches,
    else LineageError, or with ``restart`` it is rebuilt. A tokenizer put there by hand (no
    manifest) is the user's to vouch for. ``config`` is the public config its manifest records.
    """
    from transformers import AutoTokenizer

    folder = RunDir(run_dir).tokenizer
    current = tokenizer_fingerprint(t, run_dir, seed)
    manifest = manifest_path(folder)
    reuse = (folder / "tokenizer_config.json").exists() and (
        not manifest.exists() or check_resume("the tokenizer", read_fingerprint(manifest), current, restart, folder))
    barrier(d)  # every rank has read the old manifest before rank 0 replaces the folder
    if not reuse and d.main:
        if t.tokenizer.pretrained:
            tok = load_pretrained(t.tokenizer.pretrained)
        else:
            tok = train_bpe(tokenizer_sample(t, run_dir, seed), t.tokenizer.vocab_size)
        with atomic_dir(folder) as tmp:  # a crash leaves the old folder or none, never half of one
            tok.save_pretrained(tmp)
            write_json(build_manifest("tokenizer", config or {}, tokenizer=t.tokenizer.model_dump(),
                                      vocab=len(tok), lineage=current), manifest_path(tmp))
    barrier(d)
    return AutoTokenizer.from_pretrained(folder)


def sample_sources(t: TrainConfig) -> list[str]:
    """The sources the tokenizer sample reads: every phase's, phase 1's first."""
    names = dict.fromkeys([*t.phase1.mixture, *t.phase2.mixture, t.sft.source])
    return [n for n in names if n in t.sources]


def tokenizer_fingerprint(t: TrainConfig, run_dir: Path, seed: int) -> dict[str, Any]:
    """What the tokenizer is built from: its settings and, for a trained BPE, the seed, the sample's
    source definitions and the content digests of their files (a source without files is skipped
    by the sample, so it is left out here too)."""
    if t.tokenizer.pretrained:
        return fingerprint({"train.tokenizer": t.tokenizer.model_dump()})
    names = sample_sources(t)
    files: set[str] = set()
    for name in names:
        try:
            files.update(source_files(name, t.sources[name], run_dir))
        except PipelineError:
            continue
    config = {"seed": seed, "train.tokenizer": t.tokenizer.model_dump(),
              "train.sources": {n: t.sources[n].model_dump() for n in names}}
    return fingerprint(config, file_digests(files, run_dir), source_parents(files, run_dir))


def tokenizer_sample(t: TrainConfig, run_dir: Path, seed: int) -> list[str]:
    """Up to ``sample_docs`` documents, spread evenly over the sources of every phase (seeded)."""
    names = list(dict.fromkeys([*t.phase1.mixture, *t.phase2.mixture, t.sft.source]))
    per_source = max(1, t.tokenizer.sample_docs // len(names))
    texts: list[str] = []
    for i, name in enumerate(names):
        try:
            docs = read_source(name, t.sources[name], run_dir)
        except (PipelineError, KeyError) as e:
            if name in t.phase1.mixture:
                raise
            note(f"tokenizer sample skips source {name!r}: {first_line(e)}")
            continue
        rng = np.random.default_rng([seed, i])
        pick = rng.permutation(len(docs))[:per_source]
        texts.extend(docs[TEXT].iloc[np.sort(pick)].tolist())
    return texts


def tokenizer_id(folder: Path) -> str:
    """A digest of the tokenizer's content (not its mtime), so copies in later phases share caches."""
    path = folder / "tokenizer.json"
    if path.exists():
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return stable_hash(sorted(os.listdir(folder)))
