"""The run tokenizer: byte-level BPE with special tokens and a chat template, or a pretrained one."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from pipeline.errors import TrainError
from pipeline.train.data import tokenize_documents
from pipeline.train.tokenizer import BOS, EOS, IM_END, IM_START, PAD, load_pretrained, token_bytes, train_bpe
from tests.conftest import SENTENCES


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    train_bpe(SENTENCES * 10, vocab_size=400).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def test_round_trip_is_lossless_for_unseen_text(bpe):
    text = "Zebras eat grass — naïve café 42×7 = 294!\n\tIndented 日本語 line."
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert bpe.decode(ids) == text


def test_special_tokens_are_single_ids_and_roles_are_set(bpe):
    for t in (BOS, EOS, PAD, IM_START, IM_END):
        assert len(bpe(t, add_special_tokens=False)["input_ids"]) == 1
    assert (bpe.bos_token, bpe.eos_token, bpe.pad_token) == (BOS, EOS, PAD)
    assert len(bpe) == 400


def test_chat_template_renders_chatml(bpe):
    text = bpe.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == f"{IM_START}user\nHi{IM_END}\n{IM_START}assistant\n"


def test_token_bytes_sum_to_utf8_length(bpe):
    text = SENTENCES[0] + " café"
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    table = token_bytes(bpe)
    assert sum(int(table[i]) for i in ids) == len(text.encode("utf-8"))
    assert table[bpe.bos_token_id] == 0 and table[bpe.convert_tokens_to_ids(IM_END)] == 0


def test_vocab_too_small_for_specials_is_a_clear_error():
    with pytest.raises(TrainError, match=r"train.tokenizer.vocab_size.*need at least 261"):
        train_bpe(SENTENCES, vocab_size=260)


def test_pretrained_tokenizer_by_path(tiny_llama):
    tok = load_pretrained(str(tiny_llama))
    assert tok.eos_token and tok.bos_token and tok.pad_token and tok.chat_template


def test_missing_pretrained_tokenizer_names_the_key(tmp_path):
    with pytest.raises(TrainError, match="train.tokenizer.pretrained"):
        load_pretrained(str(tmp_path / "nope"))


@pytest.mark.slow
def test_document_tokenization_matches_the_tokenizer_and_is_compact(bpe):
    texts = [SENTENCES[0], "naïve café 42×7", SENTENCES[1] * 3]
    ids = tokenize_documents(bpe, texts, np.uint16, batch_size=2)
    assert [d.tolist() for d in ids] == bpe(texts, add_special_tokens=False)["input_ids"]
    assert all(d.dtype == np.uint16 for d in ids)
