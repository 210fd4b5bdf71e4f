"""A shuffle through files: rows of many tasks regrouped by a hash column, no process holding them all.

A task of one pass writes its rows into one Arrow file, ordered by the reducer each row goes to
(``hash % reducers``), with the row where each reducer's block starts in the file's schema
metadata; reducer ``j`` of the next pass reads block ``j`` of every such file. This is the
sort-based shuffle of Hadoop and Spark: the blocks wait on disk in the run directory (not in any
process, so memory stays flat whatever the corpus), a killed worker loses nothing another task
needs, and the files are the pass's record for a rerun. Files are uncompressed Arrow IPC, read
memory-mapped: a block is a zero-copy slice, and only its pages are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash

from pipeline.io import atomic_path
from pipeline.lineage import DIGEST_CHARS

INPUTS_PER_REDUCER = 8
"""Input partitions per reducer: a reducer's rows (hashes, keys, candidate shingles) are a fraction
of the text they come from, so a reducer of this many inputs' rows still holds less than one input."""
_BLOCKS = b"blocks"


def reducers_for(partitions: int) -> int:
    """How many reducers a corpus of ``partitions`` partitions gets (at least one)."""
    return max(1, -(-partitions // INPUTS_PER_REDUCER))


def reducer_of(values: np.ndarray, reducers: int) -> np.ndarray:
    """The reducer of each uint64 hash (or non-negative integer) in ``values``."""
    return (np.asarray(values).astype(np.uint64) % np.uint64(reducers)).astype(np.intp)


def write_blocks(table: pa.Table, reducer: np.ndarray, reducers: int, path: Path) -> dict[str, object]:
    """Write ``table`` to ``path`` ordered by ``reducer`` (each row's reducer, ``0 <= r < reducers``)
    with the start of every reducer's block; returns the file's name, rows, bytes and digest."""
    order = np.argsort(reducer, kind="stable")
    cuts = np.searchsorted(np.asarray(reducer)[order], np.arange(reducers + 1)).astype("<i8")
    table = table.take(order) if len(table) else table
    return write_table(table.replace_schema_metadata({_BLOCKS: cuts.tobytes()}), path)


def write_table(table: pa.Table, path: Path) -> dict[str, object]:
    """Write ``table`` to ``path`` as one Arrow IPC file, atomically; its name, rows, bytes and digest.

    The digest is xxh3-128 of the bytes, taken from memory before they are written: these files are
    the passes' own state, hashed as they are made (cheaper than reading a file back for sha256).
    """
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    data = sink.getvalue()
    with atomic_path(Path(path)) as tmp, pa.OSFile(str(tmp), "wb") as out:
        out.write(data)
    return {"file": Path(path).name, "rows": len(table), "bytes": data.size,
            "digest": xxhash.xxh3_128_hexdigest(memoryview(data))[:DIGEST_CHARS]}


def read_table(path: Path) -> pa.Table:
    """A file ``write_table`` or ``write_blocks`` wrote, memory-mapped (its pages read when touched)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def read_block(paths: Sequence[Path], reducer: int, schema: pa.Schema) -> pa.Table:
    """Block ``reducer`` of every file of ``paths`` (written by ``write_blocks``), as one table like ``schema``."""
    pieces = []
    for path in paths:
        table = read_table(path)
        cuts = np.frombuffer(table.schema.metadata[_BLOCKS], dtype="<i8")
        start, stop = int(cuts[reducer]), int(cuts[reducer + 1])
        if stop > start:
            pieces.append(table.slice(start, stop - start).replace_schema_metadata(None))
    if not pieces:
        return schema.empty_table()
    return pa.concat_tables(pieces).cast(schema) if len(pieces) > 1 else pieces[0].cast(schema)
