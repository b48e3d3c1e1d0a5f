"""`PostgresLeaseStore`: leases every instance sees, timed by the database's clock.

An acquire runs under a per-sandbox advisory lock, so the acquires of one sandbox take
turns and each draws its token from the sequence after the previous one committed: tokens
grow strictly per sandbox, across releases and deleted rows too."""

from __future__ import annotations

from typing import Any

from sandbox.adapters.postgres.database import SANDBOX_LOCK_CLASS, PostgresDatabase
from sandbox.domain.ports import Lease, LeaseStore

_RETURNING = "sandbox_id, owner, token, extract(epoch FROM expires_at)::float8"
_EXPIRY = "now() + %(ttl_s)s * interval '1 second'"

_ACQUIRE = f"""
INSERT INTO leases AS held (sandbox_id, owner, token, expires_at)
VALUES (%(sandbox_id)s, %(owner)s, nextval('lease_tokens'), {_EXPIRY})
ON CONFLICT (sandbox_id) DO UPDATE
SET owner = excluded.owner, token = nextval('lease_tokens'), expires_at = excluded.expires_at
WHERE held.expires_at <= now() OR held.owner = excluded.owner
RETURNING {_RETURNING}
"""


def _lease(row: tuple[Any, ...]) -> Lease:
    return Lease(sandbox_id=row[0], owner=row[1], token=row[2], expires_at=row[3])


class PostgresLeaseStore(LeaseStore):
    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database

    async def acquire(self, sandbox_id: str, owner: str, ttl_s: float) -> Lease | None:
        async with self._db.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                               (SANDBOX_LOCK_CLASS, sandbox_id))
            cursor = await conn.execute(
                _ACQUIRE, {"sandbox_id": sandbox_id, "owner": owner, "ttl_s": ttl_s}
            )
            row = await cursor.fetchone()
        return _lease(row) if row else None

    async def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        rows = await self._db.fetch(
            f"UPDATE leases SET expires_at = {_EXPIRY} WHERE sandbox_id = %(sandbox_id)s "
            f"AND token = %(token)s AND expires_at > now() RETURNING {_RETURNING}",
            {"sandbox_id": lease.sandbox_id, "token": lease.token, "ttl_s": ttl_s},
        )
        return _lease(rows[0]) if rows else None

    async def release(self, lease: Lease) -> None:
        await self._db.fetch(
            "DELETE FROM leases WHERE sandbox_id = %(sandbox_id)s AND token = %(token)s",
            {"sandbox_id": lease.sandbox_id, "token": lease.token},
        )

    async def current(self, sandbox_id: str) -> Lease | None:
        rows = await self._db.fetch(
            f"SELECT {_RETURNING} FROM leases "
            "WHERE sandbox_id = %(sandbox_id)s AND expires_at > now()",
            {"sandbox_id": sandbox_id},
        )
        return _lease(rows[0]) if rows else None

    async def expired(self) -> list[Lease]:
        rows = await self._db.fetch(
            f"SELECT {_RETURNING} FROM leases WHERE expires_at <= now() ORDER BY expires_at", {}
        )
        return [_lease(row) for row in rows]
