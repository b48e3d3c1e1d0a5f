"""`SqliteSandboxStore`: the embedded default store, records as JSON in the SQLite database
under the state folder. Fenced writes check the lease in the same transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sandbox.adapters import records
from sandbox.adapters.fences import checked_fence, lease_lost
from sandbox.adapters.sqlite_db import NOW, SqliteDatabase
from sandbox.domain.errors import InvalidState
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.ports import Lease, SandboxStore

_LIVE_LEASE = (
    f"SELECT 1 FROM leases WHERE sandbox_id = ? AND token = ? AND expires_at > {NOW}"
)


class SqliteSandboxStore(SandboxStore):
    """Over a database of its own (given a path; closed with the store) or a shared one."""

    def __init__(self, database: Path | SqliteDatabase) -> None:
        self._owns_database = isinstance(database, Path)
        self._db = SqliteDatabase(database) if isinstance(database, Path) else database

    def close(self) -> None:
        if self._owns_database:
            self._db.close()

    async def add(self, sandbox: Sandbox) -> None:
        try:
            await self._db.run(
                "INSERT INTO sandboxes (sandbox_id, state, created_at, record) "
                "VALUES (?, ?, ?, ?)",
                sandbox.sandbox_id, sandbox.state.value, sandbox.created_at,
                records.dump(sandbox),
            )
        except sqlite3.IntegrityError as error:
            raise InvalidState(f"sandbox {sandbox.sandbox_id} exists already") from error

    async def save(self, sandbox: Sandbox, fence: Lease | None = None) -> None:
        await self._fenced(
            sandbox.sandbox_id, fence,
            "UPDATE sandboxes SET state = ?, record = ? WHERE sandbox_id = ?",
            sandbox.state.value, records.dump(sandbox), sandbox.sandbox_id,
        )

    async def get(self, sandbox_id: str) -> Sandbox | None:
        rows = await self._db.run("SELECT record FROM sandboxes WHERE sandbox_id = ?",
                                  sandbox_id)
        return records.load(rows[0][0]) if rows else None

    async def remove(self, sandbox_id: str, fence: Lease | None = None) -> None:
        await self._fenced(sandbox_id, fence, "DELETE FROM sandboxes WHERE sandbox_id = ?",
                           sandbox_id)

    async def list(self, state: SandboxState | None = None) -> list[Sandbox]:
        if state is None:
            rows = await self._db.run("SELECT record FROM sandboxes ORDER BY created_at")
        else:
            rows = await self._db.run(
                "SELECT record FROM sandboxes WHERE state = ? ORDER BY created_at", state.value
            )
        return [records.load(row[0]) for row in rows]

    async def _fenced(
        self, sandbox_id: str, fence: Lease | None, sql: str, *args: object
    ) -> None:
        if fence is None:
            await self._db.run(sql, *args)
            return
        lease = checked_fence(fence, sandbox_id)

        def work(db: sqlite3.Connection) -> None:
            if not db.execute(_LIVE_LEASE, (lease.sandbox_id, lease.token)).fetchall():
                raise lease_lost(lease)
            db.execute(sql, args)

        await self._db.transaction(work)
