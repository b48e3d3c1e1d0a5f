"""`PostgresHandoffRequests`: handoff requests every instance sees; the first recorded for a
sandbox is the one all requesters get back."""

from __future__ import annotations

from typing import Any

from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.domain.errors import StoreUnavailable
from sandbox.domain.ports import HandoffRequest, HandoffRequests, HandoffState

_COLUMNS = "sandbox_id, requester, extract(epoch FROM requested_at)::float8, state"
# A request removed between our insert and our read is made again: a few rounds at most.
_ROUNDS = 5


def _request(row: tuple[Any, ...]) -> HandoffRequest:
    return HandoffRequest(sandbox_id=row[0], requester=row[1], requested_at=row[2],
                          state=HandoffState(row[3]))


class PostgresHandoffRequests(HandoffRequests):
    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database

    async def request(self, sandbox_id: str, requester: str) -> HandoffRequest:
        params = {"sandbox_id": sandbox_id, "requester": requester,
                  "state": HandoffState.REQUESTED.value}
        for _ in range(_ROUNDS):
            # Two statements: a request made by a concurrent transaction is seen by the
            # second one (its own snapshot), not by the insert that yielded to it.
            made = await self._db.fetch(
                "INSERT INTO handoff_requests (sandbox_id, requester, requested_at, state) "
                "VALUES (%(sandbox_id)s, %(requester)s, now(), %(state)s) "
                f"ON CONFLICT (sandbox_id) DO NOTHING RETURNING {_COLUMNS}", params,
            )
            found = made or await self._db.fetch(
                f"SELECT {_COLUMNS} FROM handoff_requests WHERE sandbox_id = %(sandbox_id)s",
                params,
            )
            if found:
                return _request(found[0])
        raise StoreUnavailable(f"the handoff request of {sandbox_id} kept vanishing")

    async def get(self, sandbox_id: str) -> HandoffRequest | None:
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM handoff_requests WHERE sandbox_id = %(sandbox_id)s",
            {"sandbox_id": sandbox_id},
        )
        return _request(rows[0]) if rows else None

    async def pending(self) -> list[HandoffRequest]:
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM handoff_requests WHERE state = %(state)s "
            "ORDER BY requested_at",
            {"state": HandoffState.REQUESTED.value},
        )
        return [_request(row) for row in rows]

    async def mark(self, sandbox_id: str, requester: str, state: HandoffState) -> bool:
        rows = await self._db.fetch(
            "UPDATE handoff_requests SET state = %(state)s "
            "WHERE sandbox_id = %(sandbox_id)s AND requester = %(requester)s RETURNING 1",
            {"sandbox_id": sandbox_id, "requester": requester, "state": state.value},
        )
        return bool(rows)

    async def remove(self, sandbox_id: str, requester: str) -> None:
        await self._db.fetch(
            "DELETE FROM handoff_requests "
            "WHERE sandbox_id = %(sandbox_id)s AND requester = %(requester)s",
            {"sandbox_id": sandbox_id, "requester": requester},
        )
