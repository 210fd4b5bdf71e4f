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


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids with BOS, continuation ids) for one request."""
    if context.endswith(" ") and not continuation.startswith(" "):  # keep the space with the answer
        context, continuation = context[:-1], " " + continuation
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):] if whole[: len(ctx)] == ctx else tok(continuation, add_special_tokens=False)["input_ids"]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return bos + ctx, cont or [tok.eos_token_id]


@torch.no_grad()
def loglikelihoods(model, tok, requests: Sequence[tuple[str, str]], batch_size: int, max_length: int,
                   device: torch.device) -> list[float]:
    """Summed log-probability (nats) of each continuation given its context, in request order."""
    encoded = [encode_pair(tok, c, x) for c, x in requests]
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        seqs, spans = [], []
        for i in chunk:
            ctx, cont = encoded[i]
            seq = (ctx + cont)[-(max_length + 1):]
            n_cont = min(len(cont), len(seq) - 1)
            seqs.append(seq)
            spans.append((len(seq) - 1 - n_cont, len(seq) - 1))
        width = max(len(s) for s in seqs) - 1
        inputs = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            inputs[r, : len(s) - 1] = torch.tensor(s[:-1])
            mask[r, : len(s) - 1] = 1
        logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits.float()
        logprobs = F.log_softmax(logits, dim=-1)
        for r, (i, (a, b)) in enumerate(zip(chunk, spans, strict=True)):
            targets = torch.tensor(seqs[r][a + 1: b + 1], device=device)
            out[i] = float(logprobs[r, a:b].gather(1, targets[:, None]).sum())
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
