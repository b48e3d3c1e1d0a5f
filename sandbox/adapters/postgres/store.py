"""`PostgresSandboxStore`: the records every instance shares. A fenced write checks its lease
and writes in one statement, holding the lease row (FOR SHARE) until it commits: a new
owner's acquire waits for it, and an owner fenced out writes nothing."""

from __future__ import annotations

from typing import Any

import psycopg

from sandbox.adapters import records
from sandbox.adapters.fences import checked_fence, lease_lost
from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.domain.errors import InvalidState
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.ports import Lease, SandboxStore

_FENCE = """
WITH fence AS (
    SELECT 1 FROM leases
    WHERE sandbox_id = %(sandbox_id)s AND token = %(token)s AND expires_at > now()
    FOR SHARE
), written AS ({write} AND EXISTS (SELECT 1 FROM fence) RETURNING 1)
SELECT EXISTS (SELECT 1 FROM fence)
"""
_SAVE = ("UPDATE sandboxes SET state = %(state)s, record = %(record)s "
         "WHERE sandbox_id = %(sandbox_id)s")
_REMOVE = "DELETE FROM sandboxes WHERE sandbox_id = %(sandbox_id)s"


class PostgresSandboxStore(SandboxStore):
    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database

    async def add(self, sandbox: Sandbox) -> None:
        try:
            await self._db.fetch(
                "INSERT INTO sandboxes (sandbox_id, state, created_at, record) "
                "VALUES (%(sandbox_id)s, %(state)s, %(created_at)s, %(record)s)",
                {"sandbox_id": sandbox.sandbox_id, "state": sandbox.state.value,
                 "created_at": sandbox.created_at, "record": records.dump(sandbox)},
            )
        except psycopg.errors.UniqueViolation as error:
            raise InvalidState(f"sandbox {sandbox.sandbox_id} exists already") from error

    async def save(self, sandbox: Sandbox, fence: Lease | None = None) -> None:
        await self._write(_SAVE, fence, {"sandbox_id": sandbox.sandbox_id,
                                          "state": sandbox.state.value,
                                          "record": records.dump(sandbox)})

    async def get(self, sandbox_id: str) -> Sandbox | None:
        rows = await self._db.fetch(
            "SELECT record FROM sandboxes WHERE sandbox_id = %(sandbox_id)s",
            {"sandbox_id": sandbox_id},
        )
        return records.load(rows[0][0]) if rows else None

    async def remove(self, sandbox_id: str, fence: Lease | None = None) -> None:
        await self._write(_REMOVE, fence, {"sandbox_id": sandbox_id})

    async def list(self, state: SandboxState | None = None) -> list[Sandbox]:
        if state is None:
            rows = await self._db.fetch("SELECT record FROM sandboxes ORDER BY created_at", {})
        else:
            rows = await self._db.fetch(
                "SELECT record FROM sandboxes WHERE state = %(state)s ORDER BY created_at",
                {"state": state.value},
            )
        return [records.load(row[0]) for row in rows]

    async def _write(self, write: str, fence: Lease | None, params: dict[str, Any]) -> None:
        if fence is None:
            await self._db.fetch(write, params)
            return
        lease = checked_fence(fence, params["sandbox_id"])
        rows = await self._db.fetch(_FENCE.format(write=write), {**params, "token": lease.token})
        if not rows[0][0]:
            raise lease_lost(lease)
