"""Training data: read a source's Parquet, split off validation, tokenize, pack, cache, mix.

Documents are framed ``BOS doc EOS`` and concatenated into non-overlapping rows of
``seq_len + 1`` tokens (inputs are ``row[:-1]``, targets ``row[1:]``). Packed rows are cached
per source as ``.npy`` token shards with a manifest, keyed by the content digests of the source's
files; a phase interleaves rows from its sources so every prefix of the plan holds each source
within about one row of its weight, and the data position is one integer.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io import atomic_path, read_json, stable_hash, write_json
from pipeline.lineage import file_digests
from pipeline.progress import progress
from pipeline.rundir import ID, TEXT, RunDir, manifest_path
from pipeline.sources import SourceConfig, read_source, source_files, validation_mask


def tokenize_documents(tok, texts: Sequence[str], dtype: type = np.int64, batch_size: int = 1024,
                       desc: str = "tokenize") -> list[np.ndarray]:
    """Token ids of each text (no special tokens) as compact arrays.

    Each batch goes straight to the Rust tokenizer's thread pool (every core, no GIL; without the
    offsets and Python ``BatchEncoding`` that ``tok(batch)`` builds, which cost as much as the
    encoding) and becomes ``dtype`` arrays at once: 2-4 bytes a token, not a Python int per token.
    """
    backend = tok.backend_tokenizer
    out: list[np.ndarray] = []
    with progress(total=len(texts), desc=desc, unit="doc", disable=len(texts) < 5000) as bar:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            out.extend(np.asarray(e.ids, dtype=dtype) for e in backend.encode_batch_fast(batch, add_special_tokens=False))
            bar.update(len(batch))
    return out


def pack_sequences(docs: Sequence[Sequence[int]], seq_len: int, bos: int, eos: int,
                   pad: int | None = None, dtype: type = np.int64) -> np.ndarray:
    """Concatenate ``BOS doc EOS`` frames into rows of ``seq_len + 1`` tokens.

    The remainder is dropped, or with ``pad`` given kept as a last row filled with ``pad``.
    """
    width = seq_len + 1
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    bos_at = np.cumsum(lengths + 2) - (lengths + 2)
    stream = np.empty(int((lengths + 2).sum()), dtype=dtype)
    body = np.ones(len(stream), dtype=bool)
    body[bos_at] = body[bos_at + lengths + 1] = False
    stream[bos_at], stream[bos_at + lengths + 1] = bos, eos
    if lengths.sum():
        stream[body] = np.concatenate([np.asarray(d, dtype=dtype) for d in docs])
    n_full = len(stream) // width
    rows = stream[: n_full * width].reshape(n_full, width)
    rest = stream[n_full * width:]
    if pad is not None and len(rest) > 1:
        last = np.full((1, width), pad, dtype=dtype)
        last[0, : len(rest)] = rest
        rows = np.concatenate([rows, last])
    return rows


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max else np.uint32


def save_array(arr: np.ndarray, path: Path) -> None:
    """np.save atomically (temporary name, then rename), with the mode the umask gives."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr)


def cached_arrays(folder: Path, key: dict, build: Callable[[], tuple[dict[str, np.ndarray], dict]]
                  ) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays under ``folder/<hash of key>/`` built once; the manifest is written last, so a torn
    cache is rebuilt rather than read."""
    where = folder / stable_hash(key)
    manifest_file = manifest_path(where)
    if manifest_file.exists():
        manifest = read_json(manifest_file)
        try:
            return {n: np.load(where / f"{n}.npy") for n in manifest["arrays"]}, manifest
        except (OSError, ValueError):
            pass  # a shard went missing or is corrupt: rebuild
    arrays, info = build()
    for n, arr in arrays.items():
        save_array(arr, where / f"{n}.npy")
    manifest = {"key": key, "arrays": sorted(arrays), **info}
    write_json(manifest, manifest_file)
    return arrays, manifest


@dataclass
class PackedSource:
    """The packed train and validation rows of one source."""

    name: str
    train: np.ndarray
    val: np.ndarray
    info: dict


def packed_source(name: str, spec: SourceConfig, run_dir: Path, tok, tokenizer_id: str, seq_len: int,
                  val_fraction: float) -> PackedSource:
    """Read, split, tokenize and pack a source, through the token-shard cache in RUN_DIR/tokens/."""
    files = source_files(name, spec, run_dir)
    # content digests, not mtimes: a shard rewritten with the same size and mtime is still new data
    key = {"source": spec.model_dump(), "files": file_digests(files, run_dir),
           "tokenizer": tokenizer_id, "seq_len": seq_len, "val_fraction": val_fraction}

    def build() -> tuple[dict[str, np.ndarray], dict]:
        docs = read_source(name, spec, run_dir)
        is_val = validation_mask(docs[ID].tolist(), val_fraction)
        dtype = token_dtype(len(tok))
        ids = tokenize_documents(tok, docs[TEXT].tolist(), dtype, desc=f"tokenize {name}")
        train_docs = [d for d, v in zip(ids, is_val, strict=True) if not v]
        val_docs = [d for d, v in zip(ids, is_val, strict=True) if v]
        train = pack_sequences(train_docs, seq_len, tok.bos_token_id, tok.eos_token_id, dtype=dtype)
        val = pack_sequences(val_docs, seq_len, tok.bos_token_id, tok.eos_token_id, pad=tok.pad_token_id,
                             dtype=dtype)
        info = {"name": name, "docs": len(docs), "val_docs": int(is_val.sum()),
                "tokens": int(sum(len(d) + 2 for d in ids)), "train_rows": len(train), "val_rows": len(val),
                "bytes": int(docs[TEXT].str.len().sum())}
        return {"train": train, "val": val}, info

    arrays, manifest = cached_arrays(RunDir(run_dir).tokens / name, key, build)
    return PackedSource(name, arrays["train"], arrays["val"], manifest)


def interleave(weights: Sequence[float], total: int) -> np.ndarray:
    """The source index of each of ``total`` plan positions, deterministic.

    Position ``i`` goes to the source furthest behind its quota ``weight * (i + 1)`` (ties to the
    first), the largest-remainder rule applied at every prefix: each source's row count stays
    within about one row of ``weight * n`` for every ``n``, so token shares track the weights at
    any budget and at any step of a run (random draws were off by several points on small runs).
    """
    w = [float(x) for x in weights]
    count = [0] * len(w)
    plan = array("H", bytes(2 * total))
    for i in range(total):
        best, behind = 0, w[0] * (i + 1) - count[0]
        for s in range(1, len(w)):
            d = w[s] * (i + 1) - count[s]
            if d > behind:
                best, behind = s, d
        count[best] += 1
        plan[i] = best
    return np.frombuffer(plan, dtype=np.uint16).astype(np.int64)


class MixtureSampler:
    """Rows drawn from weighted sources; row ``i`` of the plan is a pure function of (seed, i).

    The sources are interleaved by weight (:func:`interleave`); a source's rows are visited in a
    seeded permutation, reshuffled every epoch, so a small source repeats rather than running dry.
    """

    def __init__(self, sources: Mapping[str, np.ndarray], weights: Mapping[str, float], total_rows: int, seed: int):
        self.names = list(weights)
        self.sources = [sources[n] for n in self.names]
        w = np.array([weights[n] for n in self.names], dtype=np.float64)
        self.weights = w / w.sum()
        self.seed = seed
        self.plan = interleave(self.weights, total_rows)
        # occurrence k of source s in the plan -> k-th row of that source's epoch permutations
        self.occurrence = np.zeros(total_rows, dtype=np.int64)
        for s in range(len(self.names)):
            where = np.flatnonzero(self.plan == s)
            self.occurrence[where] = np.arange(len(where))
        self._perms: dict[tuple[int, int], np.ndarray] = {}
    def _row(self, s: int, k: int) -> np.ndarray:
        n = len(self.sources[s])
        epoch, j = divmod(int(k), n)
        if (s, epoch) not in self._perms:
            self._perms[(s, epoch)] = np.random.default_rng([self.seed, s, epoch]).permutation(n)
        return self.sources[s][self._perms[(s, epoch)][j]]

    def rows(self, start: int, count: int) -> np.ndarray:
        """Plan positions ``start .. start+count`` as an int64 array of shape (count, seq_len + 1)."""
        return np.stack([self._row(int(self.plan[i]), int(self.occurrence[i]))
                         for i in range(start, start + count)]).astype(np.int64)

    def counts(self, upto: int) -> dict[str, int]:
        """Rows drawn from each source among the first ``upto`` plan positions."""
        c = np.bincount(self.plan[:upto], minlength=len(self.names))
        return {n: int(c[i]) for i, n in enumerate(self.names)}
