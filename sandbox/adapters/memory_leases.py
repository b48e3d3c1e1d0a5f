"""In-memory leases and handoff requests, for unit tests and the fake's contract runs. The
clock is given, so tests move time by hand instead of sleeping."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable

from sandbox.domain.ports import (
    HandoffRequest,
    HandoffRequests,
    HandoffState,
    Lease,
    LeaseStore,
)


class InMemoryLeaseStore(LeaseStore):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.leases: dict[str, Lease] = {}
        self._tokens = itertools.count(1)

    def live(self, sandbox_id: str, token: int) -> bool:
        lease = self.leases.get(sandbox_id)
        return lease is not None and lease.token == token and lease.expires_at > self.clock()

    async def acquire(self, sandbox_id: str, owner: str, ttl_s: float) -> Lease | None:
        held = await self.current(sandbox_id)
        if held is not None and held.owner != owner:
            return None
        lease = Lease(sandbox_id, owner, next(self._tokens), self.clock() + ttl_s)
        self.leases[sandbox_id] = lease
        return lease

    async def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        if not self.live(lease.sandbox_id, lease.token):
            return None
        renewed = dataclasses.replace(self.leases[lease.sandbox_id],
                                      expires_at=self.clock() + ttl_s)
        self.leases[lease.sandbox_id] = renewed
        return renewed

    async def release(self, lease: Lease) -> None:
        held = self.leases.get(lease.sandbox_id)
        if held is not None and held.token == lease.token:
            del self.leases[lease.sandbox_id]

    async def current(self, sandbox_id: str) -> Lease | None:
        lease = self.leases.get(sandbox_id)
        return lease if lease is not None and lease.expires_at > self.clock() else None

    async def expired(self) -> list[Lease]:
        now = self.clock()
        return sorted((lease for lease in self.leases.values() if lease.expires_at <= now),
                      key=lambda lease: lease.expires_at)


class InMemoryHandoffRequests(HandoffRequests):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.requests: dict[str, HandoffRequest] = {}

    async def request(self, sandbox_id: str, requester: str) -> HandoffRequest:
        return self.requests.setdefault(sandbox_id, HandoffRequest(
            sandbox_id, requester, self.clock(), HandoffState.REQUESTED))

    async def get(self, sandbox_id: str) -> HandoffRequest | None:
        return self.requests.get(sandbox_id)

    async def pending(self) -> list[HandoffRequest]:
        return sorted((request for request in self.requests.values()
                       if request.state is HandoffState.REQUESTED),
                      key=lambda request: request.requested_at)

    async def mark(self, sandbox_id: str, requester: str, state: HandoffState) -> bool:
        request = self.requests.get(sandbox_id)
        if request is None or request.requester != requester:
            return False
        self.requests[sandbox_id] = dataclasses.replace(request, state=state)
        return True

    async def remove(self, sandbox_id: str, requester: str) -> None:
        request = self.requests.get(sandbox_id)
        if request is not None and request.requester == requester:
            del self.requests[sandbox_id]
