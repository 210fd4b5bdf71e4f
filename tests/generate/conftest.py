"""One real two-process LocalCluster shared by the generate tests (starting one costs seconds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.cluster import local_cluster


@pytest.fixture(scope="session")
def scheduler() -> Iterator[str]:
    """Address of a LocalCluster of two worker processes, as ``dask_client`` starts."""
    with local_cluster(workers=2) as cluster:
        yield cluster.scheduler_address
