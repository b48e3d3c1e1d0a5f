"""`SqliteLeaseStore`: leases in the SQLite database, for one instance on one machine. The
same contract as on PostgreSQL, so the domain uses leases whatever the store; expiry is by
SQLite's clock (the machine's)."""

from __future__ import annotations

import sqlite3
from typing import Any

from sandbox.adapters.sqlite_db import NOW, SqliteDatabase
from sandbox.domain.ports import Lease, LeaseStore

_COLUMNS = "sandbox_id, owner, token, expires_at"


def _lease(row: tuple[Any, ...]) -> Lease:
    return Lease(sandbox_id=row[0], owner=row[1], token=row[2], expires_at=row[3])


class SqliteLeaseStore(LeaseStore):
    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def acquire(self, sandbox_id: str, owner: str, ttl_s: float) -> Lease | None:
        def work(db: sqlite3.Connection) -> Lease | None:
            held = db.execute(
                f"SELECT owner FROM leases WHERE sandbox_id = ? AND expires_at > {NOW}",
                (sandbox_id,),
            ).fetchall()
            if held and held[0][0] != owner:
                return None
            (token,) = db.execute(
                "UPDATE lease_tokens SET last = last + 1 WHERE id = 1 RETURNING last"
            ).fetchone()
            row = db.execute(
                f"INSERT OR REPLACE INTO leases ({_COLUMNS}) VALUES (?, ?, ?, {NOW} + ?) "
                f"RETURNING {_COLUMNS}",
                (sandbox_id, owner, token, ttl_s),
            ).fetchone()
            return _lease(row)

        return await self._db.transaction(work)

    async def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        rows = await self._db.run(
            f"UPDATE leases SET expires_at = {NOW} + ? "
            f"WHERE sandbox_id = ? AND token = ? AND expires_at > {NOW} RETURNING {_COLUMNS}",
            ttl_s, lease.sandbox_id, lease.token,
        )
        return _lease(rows[0]) if rows else None

    async def release(self, lease: Lease) -> None:
        await self._db.run("DELETE FROM leases WHERE sandbox_id = ? AND token = ?",
                           lease.sandbox_id, lease.token)

    async def current(self, sandbox_id: str) -> Lease | None:
        rows = await self._db.run(
            f"SELECT {_COLUMNS} FROM leases WHERE sandbox_id = ? AND expires_at > {NOW}",
            sandbox_id,
        )
        return _lease(rows[0]) if rows else None

    async def expired(self) -> list[Lease]:
        rows = await self._db.run(
            f"SELECT {_COLUMNS} FROM leases WHERE expires_at <= {NOW} ORDER BY expires_at"
        )
        return [_lease(row) for row in rows]
