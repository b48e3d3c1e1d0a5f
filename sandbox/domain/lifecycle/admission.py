"""A place under max_running, and memory in the shared budget, for a sandbox that starts.

Sandboxes being created or restored count towards max_running before their records say
running, so concurrent starts cannot together pass the limit. Only the sandboxes running on
this instance count (those it holds leases on): other instances have limits of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sandbox.domain.capacity import Capacity
from sandbox.domain.lifecycle.ownership import Ownership
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.ports import SandboxStore


class Admission:
    def __init__(
        self, store: SandboxStore, capacity: Capacity, max_running: int, ownership: Ownership
    ) -> None:
        self._store = store
        self._capacity = capacity
        self._max_running = max_running
        self._ownership = ownership
        self._lock = asyncio.Lock()
        self._starting = 0

    @contextlib.asynccontextmanager
    async def admitted(self, sandbox: Sandbox) -> AsyncIterator[None]:
        """Hold a place while the block starts the sandbox, and its memory (waited for a
        bounded time); AtCapacity when there is no room. If the block fails, the memory is
        given back; if it succeeds, the sandbox keeps it until it stops running."""
        async with self._lock:
            running = self._starting + sum(
                1 for running in await self._store.list(SandboxState.RUNNING)
                if self._ownership.holds(running.sandbox_id))
            if running >= self._max_running:
                raise self._capacity.refusal(
                    "running_sandboxes",
                    f"{running} sandboxes are running, the most this server allows; "
                    "suspend or delete one, or retry later",
                    retry_after_s=5,
                )
            self._starting += 1
        try:
            await self._capacity.reserve(sandbox.sandbox_id, sandbox.limits.memory_mb)
            try:
                yield
            except BaseException:
                self._capacity.release(sandbox.sandbox_id)
                raise
        finally:
            self._starting -= 1
