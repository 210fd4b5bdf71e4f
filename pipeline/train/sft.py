"""SFT data: conversations -> chat-template tokens with a mask that is true on assistant tokens only.

The chat template is the single source of truth: each message's span is the growth of the rendered
text when that message is added, so any template (ours or a pretrained tokenizer's) works. The
assistant header (``<|im_start|>assistant\\n``) is context, not a target; its content and end token are.

A source row's conversation is its ``messages`` column when it has one (``[{role, content}]``, the
TRL / ``datasets`` convention the generate stage writes for conversations built turn by turn), else
its text through ``train.sft.parser`` (free-text ``Student:`` / ``Teacher:`` turns, for data users bring).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.errors import EmptySourceError, TrainError
from pipeline.io import read_parquet
from pipeline.lineage import file_digests
from pipeline.rundir import ID, MESSAGES, TEXT, RunDir
from pipeline.sources import SourceConfig, read_source, source_files, validation_mask
from pipeline.train.config import SFTConfig
from pipeline.train.data import cached_arrays, token_dtype

Conversation = list[dict[str, str]]


def conversation_parser(spec: str) -> Callable[[str], Conversation]:
    """The ``module:function`` that turns a conversation text into ``[{role, content}]``."""
    module, _, func = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError, ValueError) as e:
        raise TrainError(f"config key 'train.sft.parser': cannot import {spec!r}: {e}") from None


_ROLES = ("system", "user", "assistant")


def stored_messages(files: Sequence[str], spec: SourceConfig) -> dict[str, Conversation]:
    """Row id -> its ``messages`` (a list of ``{role, content}``), for the files that have that column.

    Ids are as :func:`~pipeline.sources.read_source` gives them (the id column, else ``path:row``).
    A message with another role than system/user/assistant is an error, never silently trained on.
    """
    out: dict[str, Conversation] = {}
    for path in files:
        names = pq.read_schema(path).names
        if MESSAGES not in names:
            continue
        has_id = spec.id_column in names
        df = read_parquet(Path(path), [MESSAGES, *([spec.id_column] if has_id else [])])
        ids = df[spec.id_column].astype(str) if has_id else [f"{path}:{i}" for i in range(len(df))]
        for row_id, messages in zip(ids, df[MESSAGES], strict=True):
            if messages is None or not len(messages):
                continue
            chat = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
            bad = next((m["role"] for m in chat if m["role"] not in _ROLES), None)
            if bad is not None:
                raise TrainError(f"{path}: row {row_id!r}: 'messages' has role {bad!r} "
                                 f"(expected {', '.join(_ROLES)})")
            out[row_id] = chat
    return out


def tokenize_chat(tok, messages: Conversation) -> tuple[list[int], list[bool]]:
    """Tokens of ``messages`` rendered by the chat template, and a mask true on assistant targets."""
    ids: list[int] = []
    mask: list[bool] = []
    rendered = ""

    def extend(text: str, trainable: bool) -> None:
        piece = tok(text, add_special_tokens=False)["input_ids"] if text else []
        ids.extend(piece)
        mask.extend([trainable] * len(piece))

    for i, message in enumerate(messages):
        full = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(rendered):
            raise TrainError("the chat template does not render conversations incrementally; "
                             "use a tokenizer whose template appends one message at a time")
        if message["role"] == "assistant":
            header = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) \
                if i else ""
            header = header[len(rendered):] if header.startswith(rendered) else ""
            extend(header, False)
            extend(full[len(rendered) + len(header):], True)
        else:
            extend(full[len(rendered):], False)
        rendered = full
    return ids, mask


def fit_chat(tok, messages: Conversation, width: int) -> list[tuple[list[int], list[bool]]]:
    """``messages`` as token rows of at most ``width`` that each keep assistant targets.

    A conversation that fits is one piece. A longer one is split into its exchanges (user turns and
    the assistant answer, after the leading system message if any), each cut to fit: its context keeps
    its last tokens (at least half the row when the answer is long), then as much of the answer as
    fits. Cutting the whole conversation at ``width`` instead would often leave only a long first
    user turn, nothing to train on.
    """
    ids, mask = tokenize_chat(tok, messages)
    if len(ids) <= width:
        return [(ids, mask)]
    system = [m for m in messages[:1] if m["role"] == "system"]
    pieces, exchange = [], []
    for message in messages[len(system):]:
        exchange.append(message)
        if message["role"] == "assistant":
            pieces.append(_cut(*tokenize_chat(tok, system + exchange), width))
            exchange = []
    return pieces


def _cut(ids: list[int], mask: list[bool], width: int) -> tuple[list[int], list[bool]]:
    """One exchange cut to ``width`` tokens: the tail of its context, then the head of its answer."""
    if len(ids) <= width:
        return ids, mask
    first = mask.index(True) if True in mask else len(ids)
    keep = min(first, max(width // 2, width - (len(ids) - first)))
    start = first - keep
    return ids[start:start + width], mask[start:start + width]


def pack_chats(chats: Sequence[tuple[list[int], list[bool]]], seq_len: int, pad: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit pack whole conversations into rows of ``seq_len + 1`` (longer ones are truncated).

    Returns (tokens, mask); padding has mask false, so it is never a target.
    """
    width = seq_len + 1
    rows: list[tuple[list[int], list[bool]]] = []
    for ids, mask in sorted(chats, key=lambda c: -len(c[0])):
        ids, mask = ids[:width], mask[:width]
        fits = [r for r in rows if width - len(r[0]) >= len(ids)]
        if fits:
            row = min(fits, key=lambda r: width - len(r[0]))
        else:
            row = ([], [])
            rows.append(row)
        row[0].extend(ids)
        row[1].extend(mask)
    tokens = np.full((len(rows), width), pad, dtype=np.int64)
    masks = np.zeros((len(rows), width), dtype=bool)
    for i, (ids, mask) in enumerate(rows):
        tokens[i, : len(ids)] = ids
        masks[i, : len(mask)] = mask
    return tokens, masks


def sft_conversations(cfg: SFTConfig, spec: SourceConfig, run_dir: Path) -> tuple[dict[str, Conversation], dict]:
    """The conversations SFT trains on (row id -> messages, in source order), with counts: how many
    came from a ``messages`` column and how many rows were skipped for lacking an assistant turn.
    ``textbook push`` publishes exactly these."""
    parse = conversation_parser(cfg.parser)
    docs = read_source(cfg.source, spec, run_dir)
    stored = stored_messages(source_files(cfg.source, spec, run_dir), spec)
    chats: dict[str, Conversation] = {}
    for doc_id, text in zip(docs[ID], docs[TEXT], strict=True):
        messages = stored[doc_id] if doc_id in stored else parse(text)
        if any(m.get("role") == "assistant" for m in messages):
            chats[doc_id] = messages
    if not chats:
        raise EmptySourceError(f"train.sources.{cfg.source}: none of {len(docs)} conversations has an "
                               f"assistant turn after parsing")
    return chats, {"from_messages": sum(i in stored for i in chats), "skipped_without_assistant": len(docs) - len(chats)}


def sft_data(cfg: SFTConfig, spec: SourceConfig, run_dir: Path, tok, tokenizer_id: str, seq_len: int,
             val_fraction: float) -> tuple[dict[str, np.ndarray], dict]:
    """Packed SFT rows ``train``/``train_mask``/``val``/``val_mask`` of the chat source, cached."""
    files = source_files(cfg.source, spec, run_dir)
    key = {"sft": cfg.source, "parser": cfg.parser, "source": spec.model_dump(), "tokenizer": tokenizer_id,
           "files": file_digests(files, run_dir), "seq_len": seq_len, "val_fraction": val_fraction,
           "conversations_from": "messages column, else parser"}

    def build() -> tuple[dict[str, np.ndarray], dict]:
        conversations, counts = sft_conversations(cfg, spec, run_dir)
        chats, ids = [], []
        for doc_id, messages in conversations.items():
            pieces = fit_chat(tok, messages, seq_len + 1)
            chats.extend(pieces)
            ids.extend([doc_id] * len(pieces))  # a split conversation stays on one side of the split
        is_val = validation_mask(ids, val_fraction)
        dtype = token_dtype(len(tok))
        out = {}
        for split, pick in (("train", ~is_val), ("val", is_val)):
            tokens, masks = pack_chats([c for c, p in zip(chats, pick, strict=True) if p], seq_len,
                                       tok.pad_token_id)
            out[split], out[f"{split}_mask"] = tokens.astype(dtype), masks
        if not out["train_mask"][:, 1:].any():
            raise EmptySourceError(f"train.sources.{cfg.source}: no assistant tokens to train on")
        info = {"conversations": len(conversations), **counts, "assistant_tokens": int(out["train_mask"].sum())}
        return out, info

    return cached_arrays(RunDir(run_dir).tokens / f"sft-{cfg.source}", key, build)
