"""Cluster fixtures: a migrated PostgreSQL schema of the test's own, and nodes on it.

Every test here is marked ``cluster`` (left out of the default run; ``-m cluster``
runs them) and ``e2e``. They need the PostgreSQL test server and Debian's HAProxy;
where either is missing they skip with the reason.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import HAPROXY, Cluster, cluster, migrated_schema
from tests.databases import postgres_unavailable


@pytest.fixture
def cluster_database() -> Iterator[str]:
    """The URL of a new schema on the PostgreSQL test server, migrated; dropped afterwards."""
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with migrated_schema() as url:
        yield url


StartCluster = Callable[..., Cluster]


def _need_haproxy() -> None:
    if not os.access(HAPROXY, os.X_OK):
        pytest.skip(f"{HAPROXY} is not installed (apt-get install haproxy)")


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two nodes and HAProxy for a whole module, on a schema of their own.

    For tests that each leave the shared state as they found it (tests/cluster/test_web.py):
    starting two nodes costs 10-40 s on the 2-core machine.
    """
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    _need_haproxy()
    directory = tmp_path_factory.mktemp("cluster")
    with (
        migrated_schema(f"mwl_cluster_shared_{os.getpid()}") as url,
        cluster(url, directory, 2) as nodes,
    ):
        yield nodes


@pytest.fixture
def start_cluster(cluster_database: str, tmp_path: Path) -> Iterator[StartCluster]:
    """Start nodes (and HAProxy) on :func:`cluster_database`; all are stopped afterwards.

    ``start_cluster(nodes=2, balancer=True, **MWL_settings)`` returns the
    :class:`~tests.cluster.harness.Cluster`; the fixture's finalizer stops (or kills)
    every process, also when the test fails.
    """
    _need_haproxy()
    with contextlib.ExitStack() as stack:

        def start(nodes: int = 2, **kwargs: object) -> Cluster:
            return stack.enter_context(cluster(cluster_database, tmp_path, nodes, **kwargs))  # type: ignore[arg-type]

        yield start
