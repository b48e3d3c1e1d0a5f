"""What every Signals does: in memory (one instance) and over PostgreSQL's LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from sandbox.adapters.memory_signals import QUEUE_LIMIT, InMemorySignals
from sandbox.adapters.postgres import signals as postgres_signals
from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.adapters.postgres.signals import APPLICATION_NAME, PostgresSignals
from sandbox.domain.ports import Signal, Signals, Subscription

pytestmark = pytest.mark.anyio

# Only a bound on a wait for a signal that should come; never reached when all is well.
DELIVERY_BOUND_S = 10.0


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def signals(request: pytest.FixtureRequest) -> AsyncIterator[Signals]:
    if request.param == "memory":
        yield InMemorySignals()
        return
    database = PostgresDatabase(request.getfixturevalue("postgres_url"))
    await database.start()
    yield PostgresSignals(database)
    await database.close()


async def next_signal(subscription: Subscription) -> Signal:
    return await asyncio.wait_for(anext(subscription), DELIVERY_BOUND_S)




async def test_a_signal_reaches_the_subscriber_of_its_channel(signals: Signals) -> None:
    async with await signals.subscribe("handoff") as subscription:
        await signals.publish("handoff", "0123456789abcdef01234567")

        assert await next_signal(subscription) == Signal("handoff", "0123456789abcdef01234567")


async def test_signals_arrive_in_order_and_only_on_channels_subscribed(
    signals: Signals,
) -> None:
    async with await signals.subscribe("instance_a", "handoff") as subscription:
        await signals.publish("instance_b", "not for a")
        for payload in ("1", "2"):
            await signals.publish("handoff", payload)
        await signals.publish("instance_a", "3")

        received = [await next_signal(subscription) for _ in range(3)]

    assert received == [Signal("handoff", "1"), Signal("handoff", "2"),
                        Signal("instance_a", "3")]


async def test_every_subscription_gets_its_own_copy(signals: Signals) -> None:
    async with await signals.subscribe("handoff") as first, \
            await signals.subscribe("handoff") as second:
        await signals.publish("handoff", "x")

        assert await next_signal(first) == await next_signal(second) == Signal("handoff", "x")


async def test_a_closed_subscription_gets_nothing_more(signals: Signals) -> None:
    kept = await signals.subscribe("handoff")
    closed = await signals.subscribe("handoff")
    await closed.close()

    await signals.publish("handoff", "after")

    assert await next_signal(kept) == Signal("handoff", "after")
    await kept.close()


@pytest.mark.parametrize("channel", ["", "Handoff", "1abc", "a-b", "a" * 64, "x; NOTIFY y"])
async def test_a_channel_name_outside_the_pattern_is_refused(
    signals: Signals, channel: str
) -> None:
    with pytest.raises(ValueError, match="channel"):
        await signals.publish(channel, "x")
    with pytest.raises(ValueError, match="channel"):
        await signals.subscribe(channel)


async def test_a_payload_of_8000_bytes_is_refused(signals: Signals) -> None:
    await signals.publish("handoff", "x" * 7999)

    with pytest.raises(ValueError, match="payload"):
        await signals.publish("handoff", "é" * 4000)


async def test_a_reader_far_behind_gets_a_missed_signal_then_the_latest() -> None:
    signals = InMemorySignals()
    async with await signals.subscribe("handoff") as subscription:
        for n in range(QUEUE_LIMIT + 1):
            await signals.publish("handoff", str(n))

        assert await next_signal(subscription) == Signal("handoff", "", missed=True)
        assert await next_signal(subscription) == Signal("handoff", str(QUEUE_LIMIT))


@pytest.mark.postgres
async def test_a_subscription_whose_connection_dies_reconnects_and_says_it_missed_signals(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_signals, "RECONNECT_FIRST_S", 0.01)
    database = PostgresDatabase(postgres_url)
    await database.start()
    signals = PostgresSignals(database)
    try:
        async with await signals.subscribe("handoff") as subscription:
            await kill_listeners(postgres_url)
            await signals.publish("handoff", "lost while cut off, or delivered")

            first = await next_signal(subscription)
            while not first.missed:
                first = await next_signal(subscription)
            await signals.publish("handoff", "after")

            assert await next_signal(subscription) == Signal("handoff", "after")
    finally:
        await database.close()


async def kill_listeners(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        cursor = await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s", (APPLICATION_NAME,))
        assert await cursor.fetchall() == [(True,)]
