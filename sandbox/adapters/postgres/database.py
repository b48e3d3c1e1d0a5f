"""`PostgresDatabase`: a connection pool to the database every instance shares, with the
schema migrated at start. Instances starting together take turns: migrations run in one
transaction under an advisory lock, and the second finds them applied."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import psycopg_pool
import structlog
from psycopg.conninfo import conninfo_to_dict

from sandbox.adapters import migrations
from sandbox.adapters.postgres.schema import MIGRATIONS
from sandbox.domain.errors import StoreUnavailable

log = structlog.get_logger(__name__)

# Advisory lock keys of this service (one bigint space for the migrations, another, of two
# int4 keys, for per-sandbox locks; PostgreSQL keeps the two spaces apart).
MIGRATION_LOCK = 0x5A4D_6967_7261_7465
SANDBOX_LOCK_CLASS = 0x5A4D_0001

# A time-out of connect and of waiting for a working connection; past it, StoreUnavailable.
CONNECT_TIMEOUT_S = 10.0


def described(url: str) -> str:
    """The database's name and host, for messages: never the password."""
    parts = conninfo_to_dict(url)
    return (f"the PostgreSQL database {parts.get('dbname', '(default)')} on "
            f"{parts.get('host', 'localhost')}")


class PostgresDatabase:
    def __init__(
        self, url: str, min_size: int = 1, max_size: int = 10,
        wait_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.where = described(url)
        # Connections are not checked when taken from the pool: a check is one more round
        # trip on every call (it doubled their latency here, scripts/bench_store.py). After a
        # restart of the server each dead connection fails one call instead (StoreUnavailable,
        # a 503) and the pool replaces it.
        self.pool = psycopg_pool.AsyncConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, name="sandbox-store",
            kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT_S)},
            timeout=wait_s,
        )

    async def start(self) -> None:
        try:
            await self.pool.open(wait=True, timeout=self.pool.timeout)
        except psycopg_pool.PoolTimeout as error:
            raise StoreUnavailable(f"{self.where} cannot be reached") from error
        await self._migrate()

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection (autocommit); losing the server is StoreUnavailable."""
        try:
            async with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
            raise StoreUnavailable(f"{self.where} is unavailable: {error}") from error

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """One statement, atomic on its own; its rows."""
        async with self.connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall() if cursor.description else []

    async def _migrate(self) -> None:
        async with self.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(migrations.SCHEMA_TABLE)
            cursor = await conn.execute(migrations.APPLIED)
            applied = {version: checksum for version, checksum in await cursor.fetchall()}
            for migration in migrations.pending(applied, MIGRATIONS, self.where):
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                    "VALUES (%s, %s, %s, now()::text)",
                    (migration.version, migration.name, migration.checksum),
                )
                log.info("store.migrated", version=migration.version, name=migration.name)
