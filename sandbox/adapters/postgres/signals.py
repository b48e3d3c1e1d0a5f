"""`PostgresSignals`: wake-ups between instances over LISTEN/NOTIFY.

Each subscription holds a dedicated connection (a pooled one would drop its LISTENs when
returned). NOTIFY is not durable: what is published while a subscription is disconnected
is lost. So a subscription that lost its connection reconnects (backing off up to
RECONNECT_MAX_S), listens again, and yields a `missed` signal first: its reader must then
re-read the durable rows (handoff requests), as it also does at its own polling interval.
A connection that fell silent without an error is found by a probe every PROBE_S."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import psycopg
import structlog
from psycopg import sql

from sandbox.adapters.channels import checked_channel, checked_payload
from sandbox.adapters.postgres.database import CONNECT_TIMEOUT_S, PostgresDatabase
from sandbox.domain.errors import StoreUnavailable
from sandbox.domain.ports import Signal, Signals, Subscription

log = structlog.get_logger(__name__)

PROBE_S = 30.0
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0
APPLICATION_NAME = "sandbox-signals"


class _ListeningSubscription(Subscription):
    """Read it from one task; close it from that task, or after cancelling it."""

    def __init__(self, url: str, channels: tuple[str, ...]) -> None:
        self._url = url
        self.channels = channels
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._notifies: AsyncGenerator[psycopg.Notify, None] | None = None

    async def connect(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S),
            application_name=APPLICATION_NAME,
        )
        try:
            for channel in self.channels:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def __anext__(self) -> Signal:
        while True:
            if self._conn is None:
                await self._reconnect()
                return Signal(channel=self.channels[0], payload="", missed=True)
            try:
                return await self._next_notify(self._conn)
            except psycopg.OperationalError as error:
                log.warning("signals.connection_lost", error=str(error))
                await self._drop()

    async def _next_notify(self, conn: psycopg.AsyncConnection[Any]) -> Signal:
        while True:
            if self._notifies is None:
                self._notifies = conn.notifies(timeout=PROBE_S)
            try:
                notify = await anext(self._notifies)
            except StopAsyncIteration:
                # Quiet for PROBE_S: prove the connection still lives (notifications that
                # arrive meanwhile are kept for the next round).
                self._notifies = None
                await conn.execute("SELECT 1")
                continue
            return Signal(channel=notify.channel, payload=notify.payload)

    async def _reconnect(self) -> None:
        delay = RECONNECT_FIRST_S
        while True:
            try:
                await self.connect()
            except psycopg.OperationalError as error:
                log.warning("signals.reconnect_failed", error=str(error), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            log.info("signals.reconnected", channels=list(self.channels))
            return

    async def _drop(self) -> None:
        notifies, conn = self._notifies, self._conn
        self._notifies, self._conn = None, None
        if notifies is not None:
            await notifies.aclose()
        if conn is not None:
            await conn.close()

    async def close(self) -> None:
        await self._drop()


class PostgresSignals(Signals):
    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database

    async def publish(self, channel: str, payload: str) -> None:
        await self._db.fetch("SELECT pg_notify(%(channel)s, %(payload)s)", {
            "channel": checked_channel(channel), "payload": checked_payload(payload)})

    async def subscribe(self, *channels: str) -> Subscription:
        if not channels:
            raise ValueError("subscribe to at least one channel")
        subscription = _ListeningSubscription(
            self._db.url, tuple(sorted(set(map(checked_channel, channels)))))
        try:
            await subscription.connect()
        except psycopg.OperationalError as error:
            raise StoreUnavailable(f"{self._db.where} is unavailable: {error}") from error
        return subscription
