"""Log-likelihood scoring of continuations, batched, and bits per byte of held-out text.

Context and continuation are tokenized as lm-evaluation-harness does: the continuation's tokens are
those of ``context + continuation`` past the context's own tokens, so a merge across the boundary
is not double counted; sequences longer than the window lose their left end. Requests are sorted by
length so a batch pads little; the model runs in bf16 on CUDA and fp32 on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def special_prefix(tok, add_bos_token: bool | None) -> list[int]:
    """The ids put before every context: the tokenizer's own special tokens (``None``, lm-eval's
    default), its BOS (``True``) or nothing (``False``)."""
    if add_bos_token is not None:
        return [tok.bos_token_id] if add_bos_token and tok.bos_token_id is not None else []
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
    return full[:start]


def encode_pair(tok, context: str, continuation: str, prefix: list[int]) -> tuple[list[int], list[int]]:
    """(context ids after ``prefix``, continuation ids) for one request; an empty context starts
    from BOS (else EOS), as lm-eval's does."""
    if context.endswith(" ") and not continuation.startswith(" "):  # keep the space with the answer
        context, continuation = context[:-1], " " + continuation
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):] if whole[: len(ctx)] == ctx else tok(continuation, add_special_tokens=False)["input_ids"]
    start = prefix or ([] if ctx else [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id])
    return start + ctx, cont or [tok.eos_token_id]


@torch.no_grad()
def loglikelihoods(model, tok, requests: Sequence[tuple[str, str]], batch_size: int, max_length: int,
                   device: torch.device, add_bos_token: bool | None = None) -> list[float]:
    """Summed log-probability (nats) of each continuation given its context, in request order.

    Rows are left-padded (with explicit position ids) so every continuation ends at the last
    position, and only the last positions' logits are computed (``logits_to_keep``): the vocabulary
    projection over the whole context is most of the work for a small model.
    """
    prefix = special_prefix(tok, add_bos_token)
    encoded = [encode_pair(tok, c, x, prefix) for c, x in requests]
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = []
        for i in chunk:
            ctx, cont = encoded[i]
            seq = (ctx + cont)[-(max_length + 1):]
            rows.append((seq, min(len(cont), len(seq) - 1)))
        width = max(len(seq) for seq, _ in rows) - 1
        keep = max(n for _, n in rows)
        inputs = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        targets = torch.zeros((len(rows), keep), dtype=torch.long)
        for r, (seq, n) in enumerate(rows):
            inputs[r, width - len(seq) + 1:] = torch.tensor(seq[:-1])
            mask[r, width - len(seq) + 1:] = 1
            targets[r, keep - n:] = torch.tensor(seq[len(seq) - n:])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device),
                       position_ids=positions.to(device), logits_to_keep=keep).logits[:, -keep:].float()
        logprobs = F.log_softmax(logits, dim=-1).gather(2, targets.to(device)[..., None])[..., 0]
        for r, (i, (_, n)) in enumerate(zip(chunk, rows, strict=True)):
            out[i] = float(logprobs[r, keep - n:].sum())
    return out


@torch.no_grad()
def bits_per_byte(model, tok, texts: Sequence[str], max_length: int, device: torch.device,
                  batch_size: int) -> float:
    """Bits per UTF-8 byte of ``texts``: each document BOS-framed, cut into windows of ``max_length``."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    windows: list[list[int]] = []
    nbytes = 0
    for text in texts:
        ids = bos + tok(text, add_special_tokens=False)["input_ids"]
        nbytes += len(text.encode("utf-8"))
        for start in range(0, max(1, len(ids) - 1), max_length):
            windows.append(ids[start:start + max_length + 1])
    windows = [w for w in windows if len(w) > 1]
    if not windows or nbytes == 0:
        return float("nan")
    nats = 0.0
    windows.sort(key=len, reverse=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        width = len(batch[0])
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        valid = torch.zeros((len(batch), width), dtype=torch.bool)
        for r, w in enumerate(batch):
            ids[r, : len(w)] = torch.tensor(w)
            valid[r, : len(w)] = True
        ids, valid = ids.to(device), valid.to(device)
        logits = model(input_ids=ids[:, :-1], attention_mask=valid[:, :-1].long()).logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(len(batch), -1)
        nats += float(loss[valid[:, 1:]].sum())
    return nats / (math.log(2) * nbytes)
