"""The run's tokenizer: a byte-level BPE trained on the phase mixtures, or a pretrained one.

Either way it is saved as a ``PreTrainedTokenizerFast`` in ``RUN_DIR/tokenizer/`` with BOS/EOS/pad,
the ChatML tokens and a chat template, so checkpoints load with ``AutoTokenizer``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pipeline.errors import TrainError

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
