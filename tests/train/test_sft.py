"""SFT: loss on assistant tokens only, best-fit packing, no NaN from a micro-batch without targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.errors import EmptySourceError, TrainError
from pipeline.sources import SourceConfig
from pipeline.train.config import SFTConfig
from pipeline.train.distributed import Dist
from pipeline.train.evals import IGNORE, batch_targets
from pipeline.train.loop import train_step
from pipeline.train.sft import conversation_parser, fit_chat, pack_chats, sft_data, tokenize_chat
from pipeline.train.tokenizer import train_bpe
from tests.conftest import SENTENCES

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Blue light scatters most."}, {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You are welcome."}]


def _tok(tmp_path):
    train_bpe(SENTENCES * 10, vocab_size=400).save_pretrained(tmp_path)
    return AutoTokenizer.from_pretrained(tmp_path)


def test_mask_covers_assistant_content_and_end_token_only(tmp_path):
    tok = _tok(tmp_path)
    ids, mask = tokenize_chat(tok, CHAT)
    assert tok.decode(ids) == tok.apply_chat_template(CHAT, tokenize=False)  # same as the template
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "Blue light scatters most.<|im_end|>\nYou are welcome.<|im_end|>\n"
    assert "user" not in trained and "<|im_start|>" not in trained


def test_best_fit_packing_keeps_conversations_whole():
    chats = [([1] * 6, [True] * 6), ([2] * 3, [False, True, True]), ([3] * 4, [True] * 4), ([4] * 2, [True] * 2)]
    tokens, masks = pack_chats(chats, seq_len=7, pad=0)  # rows of 8
    assert tokens.tolist() == [[1] * 6 + [4] * 2, [3] * 4 + [2] * 3 + [0]]
    assert masks.tolist()[1] == [True] * 4 + [False, True, True, False]  # padding is never a target


def test_a_fully_masked_micro_batch_adds_zero_not_nan(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rows = torch.randint(5, 100, (2, 9))
    nothing = torch.zeros_like(rows, dtype=torch.bool)
    some = nothing.clone()
    some[:, 4:] = True
    batches = [batch_targets(rows, nothing, pad=0), batch_targets(rows, some, pad=0)]
    assert (batches[0][1] == IGNORE).all()
    loss, norm = train_step(model, model, opt, batches, Dist(), clip=1.0, autocast=lambda: torch.autocast("cpu", enabled=False))
    assert math.isfinite(float(loss)) and float(loss) > 0 and math.isfinite(float(norm))
    loss, norm = train_step(model, model, opt, [batches[0]], Dist(), clip=1.0,
                            autocast=lambda: torch.autocast("cpu", enabled=False))
    assert float(loss) == 0.0 and float(norm) == 0.0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_default_parser_is_the_generate_stages_conversation_parser():
    parse = conversation_parser(SFTConfig().parser)
    assert parse("Student: Why is ice slippery?\nTeacher: A thin film of water forms on top.") == [
        {"role": "user", "content": "Why is ice slippery?"},
        {"role": "assistant", "content": "A thin film of water forms on top."}]


def _chat_source(tmp_path, rows):
    import pandas as pd

    from pipeline.io import write_parquet

    path = tmp_path / "chats" / "part-00000.parquet"
    write_parquet(pd.DataFrame(rows), path)
    return SourceConfig(paths=[str(path)])


def test_sft_reads_the_messages_column_when_present(tmp_path):
    tok = _tok(tmp_path / "tok")
    chat = [{"role": "user", "content": "Why is the sky blue?"},
            {"role": "assistant", "content": "Blue light scatters most."},
            {"role": "user", "content": "And sunsets?"}, {"role": "assistant", "content": "The light goes further."}]
    rows = [{"id": f"c{i}", "text": "prose with no turn labels at all", "messages": chat} for i in range(6)]
    rows.append({"id": "plain", "text": "Student: Is ice slippery?\nTeacher: A film of water forms.", "messages": None})
    spec = _chat_source(tmp_path, rows)
    arrays, info = sft_data(SFTConfig(), spec, tmp_path / "run", tok, "tok", seq_len=512, val_fraction=0.2)
    assert info["conversations"] == 7 and info["from_messages"] == 6  # the row without messages is parsed
    tokens = np.concatenate([arrays["train"], arrays["val"]])
    masks = np.concatenate([arrays["train_mask"], arrays["val_mask"]])
    trained = tok.decode(tokens[masks].tolist())
    assert trained.count("Blue light scatters most.<|im_end|>") == 6
    assert trained.count("The light goes further.<|im_end|>") == 6
    assert "Why is the sky blue?" not in trained and "A film of water forms." in trained


def test_chat_data_with_only_a_messages_column_is_read(tmp_path):
    """TRL / datasets chat data: no text column, only ``messages``; every source reader takes it."""
    from pipeline.sources import check_source, read_source

    tok = _tok(tmp_path / "tok")
    chat = [{"role": "user", "content": "Why is the sky blue?"}, {"role": "assistant", "content": "Blue scatters most."}]
    spec = _chat_source(tmp_path, [{"messages": chat} for _ in range(5)])
    check_source("chat", spec, tmp_path / "run")
    docs = read_source("chat", spec, tmp_path / "run")
    assert docs["text"].tolist() == ["user: Why is the sky blue?\n\nassistant: Blue scatters most."] * 5
    arrays, info = sft_data(SFTConfig(), spec, tmp_path / "run", tok, "tok", seq_len=512, val_fraction=0.2)
    assert info["conversations"] == 5 and info["from_messages"] == 5
    trained = tok.decode(np.concatenate([arrays["train"], arrays["val"]])[
        np.concatenate([arrays["train_mask"], arrays["val_mask"]])].tolist())
    assert trained.count("Blue scatters most.<|im_end|>") == 5


def test_sft_on_user_data_without_conversations_fails_loudly(tmp_path):
    tok = _tok(tmp_path / "tok")
    spec = _chat_source(tmp_path, [{"id": f"d{i}", "text": "Just an essay, no turns."} for i in range(4)])
    with pytest.raises(EmptySourceError, match="none of 4 conversations has an assistant turn"):
        sft_data(SFTConfig(), spec, tmp_path / "run", tok, "tok", seq_len=512, val_fraction=0.2)


def test_a_messages_column_with_an_unknown_role_is_an_error(tmp_path):
    tok = _tok(tmp_path / "tok")
    spec = _chat_source(tmp_path, [{"id": "x", "text": "t", "messages": [{"role": "tool", "content": "{}"}]}])
    with pytest.raises(TrainError, match="role 'tool'"):
        sft_data(SFTConfig(), spec, tmp_path / "run", tok, "tok", seq_len=512, val_fraction=0.2)


def test_a_conversation_longer_than_a_row_is_split_into_exchanges_that_keep_their_targets(tmp_path):
    tok = _tok(tmp_path)
    long_question = " ".join(SENTENCES)  # far longer than a row on its own
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": long_question},
            {"role": "assistant", "content": "Blue light scatters most."},
            {"role": "user", "content": "And sunsets?"}, {"role": "assistant", "content": "The light goes further."}]
    assert fit_chat(tok, CHAT, 10_000) == [tokenize_chat(tok, CHAT)]  # what fits stays whole
    pieces = fit_chat(tok, chat, 48)
    assert len(pieces) == 2 and all(len(ids) <= 48 and any(mask) for ids, mask in pieces)
    trained = [tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) for ids, mask in pieces]
    assert trained == ["Blue light scatters most.<|im_end|>\n", "The light goes further.<|im_end|>\n"]
    assert "Be brief." in tok.decode(pieces[1][0])  # the system message leads every exchange that fits it
