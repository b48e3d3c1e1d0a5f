"""PostgreSQL stopped and started again under the adapters: clean StoreUnavailable errors
while it is down, and work resumes by itself when it is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from pg_cluster import Cluster

from contract.test_store_contract import a_sandbox
from sandbox.adapters.postgres import signals as postgres_signals
from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.adapters.postgres.signals import PostgresSignals
from sandbox.adapters.postgres.store import PostgresSandboxStore
from sandbox.domain.errors import StoreUnavailable
from sandbox.domain.ports import Signal

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

T = TypeVar("T")

# Bounds on recovery, not measurements: the pool and the subscription retry with backoff.
RECOVERY_BOUND_S = 30.0


async def until_done(call: Callable[[], Awaitable[T]]) -> T:
    """Retries while the store is unavailable: after a restart each pooled connection that
    died fails one call, then the pool replaces it."""
    while True:
        try:
            return await call()
        except StoreUnavailable:
            await asyncio.sleep(0.1)


@pytest.fixture
async def database(own_postgres_cluster: Cluster) -> AsyncIterator[PostgresDatabase]:
    opened = PostgresDatabase(own_postgres_cluster.url(), wait_s=1.0)
    await opened.start()
    yield opened
    await opened.close()


async def test_store_calls_fail_cleanly_while_postgresql_is_down_and_work_after(
    own_postgres_cluster: Cluster, database: PostgresDatabase
) -> None:
    store = PostgresSandboxStore(database)
    sandbox = a_sandbox()
    await store.add(sandbox)

    own_postgres_cluster.stop()
    with pytest.raises(StoreUnavailable, match="PostgreSQL database postgres on"):
        await store.get(sandbox.sandbox_id)
    with pytest.raises(StoreUnavailable):
        await store.list()
    own_postgres_cluster.start()

    read_back = await asyncio.wait_for(until_done(lambda: store.get(sandbox.sandbox_id)),
                                       RECOVERY_BOUND_S)

    assert read_back == sandbox


async def test_a_subscription_outlives_a_restart_and_says_it_missed_signals(
    own_postgres_cluster: Cluster, database: PostgresDatabase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(postgres_signals, "RECONNECT_MAX_S", 0.5)
    signals = PostgresSignals(database)
    async with await signals.subscribe("handoff") as subscription:
        own_postgres_cluster.stop()
        waiting = asyncio.create_task(anext(subscription))
        await asyncio.sleep(1.0)  # it retries while the server is down
        own_postgres_cluster.start()

        assert await asyncio.wait_for(waiting, RECOVERY_BOUND_S) == Signal(
            "handoff", "", missed=True)
        await asyncio.wait_for(until_done(lambda: signals.publish("handoff", "after")),
                               RECOVERY_BOUND_S)
        assert await asyncio.wait_for(anext(subscription), RECOVERY_BOUND_S) == Signal(
            "handoff", "after")


async def test_a_quiet_subscription_probes_its_connection_and_still_hears_signals(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_signals, "PROBE_S", 0.05)
    database = PostgresDatabase(postgres_url)
    await database.start()
    signals = PostgresSignals(database)
    try:
        async with await signals.subscribe("handoff") as subscription:
            waiting = asyncio.create_task(anext(subscription))
            await asyncio.sleep(0.3)  # several probe rounds

            await signals.publish("handoff", "x")

            assert await asyncio.wait_for(waiting, RECOVERY_BOUND_S) == Signal("handoff", "x")
    finally:
        await database.close()
