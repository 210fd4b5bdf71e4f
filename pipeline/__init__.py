"""Synthetic textbook-quality data pipeline: generate, classify, filter, train, publish."""

import os

# Arrow's allocator (mimalloc) keeps freed pages for reuse by default; a stage that reads, rewrites
# and frees partitions on several threads then holds well above its working set, and returning
# them at once costs no time the benchmarks can see (bench/results/dedup_peers.md). Read when
# pyarrow loads, so it is set here, before any import of it; a value the user exported wins.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")

__version__ = "0.1.0"
