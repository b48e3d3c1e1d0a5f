"""Work an answer need not wait for (deleting a stopped container, removing a spent checkpoint
image), run in the background and keyed by sandbox id: whatever next uses that id (a
restore under it, its destruction) waits for it first, and `close` waits for all of it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Housekeeping:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def later(self, key: str, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` after what is already pending for `key`; a failure is logged."""
        previous = self._tasks.get(key)

        async def run() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            try:
                await work
            except Exception:
                log.exception("runsc.housekeeping_failed", sandbox_id=key)

        task = asyncio.create_task(run())
        self._tasks[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(key) is done:
                del self._tasks[key]

        task.add_done_callback(forget)

    async def settled(self, key: str) -> None:
        """Until nothing is pending for `key` (cancelling the caller leaves the work on)."""
        while (task := self._tasks.get(key)) is not None:
            await asyncio.wait({task})

    async def close(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks.values()))
