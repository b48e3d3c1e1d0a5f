"""The shared-state backends the contract suites hold to one behaviour: in memory, SQLite and
PostgreSQL. An `Instance` is what one server process holds: the store, leases and handoff
requests over one database connection (or pool); two instances over one database are two
servers sharing it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.adapters.memory_leases import InMemoryHandoffRequests, InMemoryLeaseStore
from sandbox.adapters.memory_store import InMemorySandboxStore
from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.adapters.postgres.handoffs import PostgresHandoffRequests
from sandbox.adapters.postgres.leases import PostgresLeaseStore
from sandbox.adapters.postgres.store import PostgresSandboxStore
from sandbox.adapters.sqlite_db import SqliteDatabase
from sandbox.adapters.sqlite_handoffs import SqliteHandoffRequests
from sandbox.adapters.sqlite_leases import SqliteLeaseStore
from sandbox.adapters.sqlite_store import SqliteSandboxStore
from sandbox.domain.ports import HandoffRequests, LeaseStore, SandboxStore

BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclass(frozen=True)
class Instance:
    store: SandboxStore
    leases: LeaseStore
    handoffs: HandoffRequests


class Backend:
    """Opens instances over one database of the given kind; closes them all at the end."""

    def __init__(self, kind: str, where: str | Path, stack: contextlib.AsyncExitStack) -> None:
        self.kind, self._where, self._stack = kind, where, stack
        self._memory: Instance | None = None

    async def instance(self) -> Instance:
        if self.kind == "memory":
            # One process: every "instance" is the same objects.
            if self._memory is None:
                leases = InMemoryLeaseStore()
                self._memory = Instance(InMemorySandboxStore(leases), leases,
                                        InMemoryHandoffRequests())
            return self._memory
        if self.kind == "sqlite":
            sqlite = SqliteDatabase(Path(self._where))
            self._stack.callback(sqlite.close)
            return Instance(SqliteSandboxStore(sqlite), SqliteLeaseStore(sqlite),
                            SqliteHandoffRequests(sqlite))
        postgres = PostgresDatabase(str(self._where), max_size=4)
        await postgres.start()
        self._stack.push_async_callback(postgres.close)
        return Instance(PostgresSandboxStore(postgres), PostgresLeaseStore(postgres),
                        PostgresHandoffRequests(postgres))


@contextlib.asynccontextmanager
async def opened_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Backend]:
    kind = request.param
    where: str | Path = (request.getfixturevalue("postgres_url") if kind == "postgres"
                         else tmp_path / "sandboxes.db")
    async with contextlib.AsyncExitStack() as stack:
        yield Backend(kind, where, stack)
