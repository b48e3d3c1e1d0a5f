"""The leases this instance holds: one per sandbox it runs.

A sandbox is acquired before it is launched or restored here, and released after it stopped
running here (suspended, ended, deleted). Every write of its record while it is held is
fenced by the lease (`Sandboxes.save`). A heartbeat renews the leases; one that cannot be
renewed in time is given up, and its container killed, before another instance may take the
sandbox over: at no moment do two instances run one sandbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from sandbox.domain.errors import StoreUnavailable
from sandbox.domain.ports import Lease, LeaseStore

log = structlog.get_logger(__name__)


class Ownership:
    def __init__(
        self, leases: LeaseStore, owner: str, ttl_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.leases = leases
        self.owner = owner
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        self.held: dict[str, Lease] = {}
        # When each lease was last acquired or renewed, by this instance's own clock.
        self._renewed_at: dict[str, float] = {}

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3

    @property
    def margin_s(self) -> float:
        """A lease not renewed for ttl - margin is given up: by then the database's clock may
        be near its expiry (clocks drift, a renewal takes time)."""
        return self.ttl_s / 3

    def holds(self, sandbox_id: str) -> bool:
        return sandbox_id in self.held

    def lease(self, sandbox_id: str) -> Lease | None:
        return self.held.get(sandbox_id)

    async def acquire(self, sandbox_id: str) -> bool:
        """Whether the sandbox is ours now (False: another instance holds a live lease). One
        held already stays as it is: acquiring anew would fence out our own writes."""
        if sandbox_id in self.held:
            return True
        lease = await self.leases.acquire(sandbox_id, self.owner, self.ttl_s)
        if lease is None:
            return False
        self.held[sandbox_id] = lease
        self._renewed_at[sandbox_id] = self._monotonic()
        return True

    async def release(self, sandbox_id: str) -> None:
        """Let go of a sandbox that no longer runs here. When the store cannot be reached the
        lease simply expires."""
        lease = self.forget(sandbox_id)
        if lease is None:
            return
        try:
            await self.leases.release(lease)
        except StoreUnavailable:
            log.warning("lease.release_failed", sandbox_id=sandbox_id)

    def forget(self, sandbox_id: str) -> Lease | None:
        self._renewed_at.pop(sandbox_id, None)
        return self.held.pop(sandbox_id, None)

    async def renew(self) -> list[str]:
        """Renew every lease held; the ids whose leases are lost: gone (taken over, expired)
        or not renewed for longer than is safe. The caller ends their containers."""
        lost = []
        now = self._monotonic()
        for sandbox_id, lease in list(self.held.items()):
            try:
                renewed = await self.leases.renew(lease, self.ttl_s)
            except StoreUnavailable:
                if now - self._renewed_at.get(sandbox_id, now) < self.ttl_s - self.margin_s:
                    continue  # the database may be back before the lease runs out
                log.error("lease.not_renewed", sandbox_id=sandbox_id, ttl_s=self.ttl_s)
                lost.append(sandbox_id)
                continue
            if self.held.get(sandbox_id) is not lease:
                continue  # released or re-acquired meanwhile
            if renewed is None:
                log.error("lease.lost", sandbox_id=sandbox_id, token=lease.token)
                lost.append(sandbox_id)
                continue
            self.held[sandbox_id] = renewed
            self._renewed_at[sandbox_id] = now
        return lost
