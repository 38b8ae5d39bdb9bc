"""A PostgreSQL cluster for the session (tests/pg/pgcluster.py), and a fresh database per test.

Skipped only when the binaries are absent and this is not CI; in CI (``CI=true``) a missing
PostgreSQL fails, since ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .pgcluster import OWNER, SUPERUSER, WRITER, PgCluster, find_bin_dir, start_cluster


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    if find_bin_dir() is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql; .ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


class PgDb:
    """One test's database: DSNs for the writer (the server), the owner and the superuser."""

    def __init__(self, cluster: PgCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.writer = cluster.dsn(WRITER, name)
        self.owner = cluster.dsn(OWNER, name)
        self.superuser = cluster.dsn(SUPERUSER, name)


@pytest.fixture
def pgdb(pg: PgCluster) -> PgDb:
    return PgDb(pg, pg.new_database())
