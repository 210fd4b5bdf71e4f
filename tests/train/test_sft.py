"""SFT: loss on assistant tokens only, best-fit packing, no NaN from a micro-batch without targets."""

from __future__ import annotations

import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.train.config import SFTConfig
from pipeline.train.evals import IGNORE, batch_targets
from pipeline.train.loop import Dist, train_step
from pipeline.train.sft import conversation_parser, pack_chats, tokenize_chat
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
