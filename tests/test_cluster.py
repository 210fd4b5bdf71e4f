"""The LocalCluster that ``dask_client`` starts: worker processes as the stages need them."""

from __future__ import annotations

import resource

import numpy as np

from pipeline.cluster import dask_client


def _page_faults_per_temporary(rounds: int = 6, size: int = 32 << 20) -> list[int]:
    """Minor page faults of each of ``rounds`` allocate-fill-free cycles of a ``size``-byte array."""
    faults = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        temporary = np.ones(size, dtype=np.uint8)
        del temporary
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


def test_workers_reuse_large_temporaries_instead_of_refaulting_them():
    # Under dask's default MALLOC_TRIM_THRESHOLD_ every such array is mmapped and unmapped, so each
    # cycle faults in all its pages again (>= 16 even with 2 MiB transparent huge pages).
    with dask_client(workers=1) as client:
        faults = client.submit(_page_faults_per_temporary, pure=False).result()
    assert min(faults[2:]) == 0, faults
