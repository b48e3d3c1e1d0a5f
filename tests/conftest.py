"""Fixtures every tier may use: a throwaway PostgreSQL cluster for the session (started only
when a test asks for it) and a fresh database in it per test."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from pg_cluster import Cluster, ClusterUnavailable, log_tail, throwaway_cluster
from psycopg import sql


def postgres_required() -> bool:
    """Under `make test` and in CI a machine that cannot start PostgreSQL fails its tests;
    elsewhere (make test-unit, no PostgreSQL installed) they are skipped."""
    return (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("SANDBOX_REQUIRE_RUNSC") == "1"
        or os.environ.get("SANDBOX_REQUIRE_POSTGRES") == "1"
    )


def started_cluster(stack: contextlib.ExitStack) -> Cluster:
    try:
        return stack.enter_context(throwaway_cluster())
    except ClusterUnavailable as problem:
        if postgres_required():
            pytest.fail(f"{problem} (CI=true or SANDBOX_REQUIRE_RUNSC=1: not skipping)",
                        pytrace=False)
        pytest.skip(str(problem))


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        yield started_cluster(stack)


@pytest.fixture
def own_postgres_cluster() -> Iterator[Cluster]:
    """A cluster for this test alone, which it may stop and start (outages)."""
    with contextlib.ExitStack() as stack:
        yield started_cluster(stack)


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    name = f"test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0")
                          .format(sql.Identifier(name)))
    except psycopg.OperationalError as error:
        pytest.fail(f"the test cluster does not answer: {error}\n{log_tail(postgres_cluster)}")
    yield postgres_cluster.url(name)
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
