"""`SqliteHandoffRequests`: handoff requests in the SQLite database. With one instance they
are rarely made, but the domain speaks to one contract whatever the store."""

from __future__ import annotations

import sqlite3
from typing import Any

from sandbox.adapters.sqlite_db import NOW, SqliteDatabase
from sandbox.domain.ports import HandoffRequest, HandoffRequests, HandoffState

_COLUMNS = "sandbox_id, requester, requested_at, state"


def _request(row: tuple[Any, ...]) -> HandoffRequest:
    return HandoffRequest(sandbox_id=row[0], requester=row[1], requested_at=row[2],
                          state=HandoffState(row[3]))


class SqliteHandoffRequests(HandoffRequests):
    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def request(self, sandbox_id: str, requester: str) -> HandoffRequest:
        def work(db: sqlite3.Connection) -> HandoffRequest:
            db.execute(
                f"INSERT OR IGNORE INTO handoff_requests ({_COLUMNS}) VALUES (?, ?, {NOW}, ?)",
                (sandbox_id, requester, HandoffState.REQUESTED.value),
            )
            return _request(db.execute(
                f"SELECT {_COLUMNS} FROM handoff_requests WHERE sandbox_id = ?", (sandbox_id,)
            ).fetchone())

        return await self._db.transaction(work)

    async def get(self, sandbox_id: str) -> HandoffRequest | None:
        rows = await self._db.run(
            f"SELECT {_COLUMNS} FROM handoff_requests WHERE sandbox_id = ?", sandbox_id
        )
        return _request(rows[0]) if rows else None

    async def pending(self) -> list[HandoffRequest]:
        rows = await self._db.run(
            f"SELECT {_COLUMNS} FROM handoff_requests WHERE state = ? ORDER BY requested_at",
            HandoffState.REQUESTED.value,
        )
        return [_request(row) for row in rows]

    async def mark(self, sandbox_id: str, requester: str, state: HandoffState) -> bool:
        rows = await self._db.run(
            "UPDATE handoff_requests SET state = ? WHERE sandbox_id = ? AND requester = ? "
            "RETURNING 1",
            state.value, sandbox_id, requester,
        )
        return bool(rows)

    async def remove(self, sandbox_id: str, requester: str) -> None:
        await self._db.run(
            "DELETE FROM handoff_requests WHERE sandbox_id = ? AND requester = ?",
            sandbox_id, requester,
        )
