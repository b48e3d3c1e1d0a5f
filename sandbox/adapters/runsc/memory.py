"""The memory limit on a host without usable cgroups.

runsc then runs with `--ignore-cgroups` and no kernel holds the limit: measured here, a script
limited to 256 MiB allocated 2 GiB and exited 0. `MemoryWatch` is the layer left: it polls
gVisor's own accounting of the sandbox (`runsc events --stats`, which answers without cgroups)
and kills a sandbox past its limit. It acts between polls, so a sandbox can overshoot by what
it allocates in one interval; gVisor's accounting counts application memory (including the
in-memory root overlay and tmpfs files), not the sentry's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

POLL_S = 0.25

Usage = Callable[[str], Awaitable[int | None]]
Kill = Callable[[str], Awaitable[None]]


class MemoryWatch:
    def __init__(self, usage: Usage, kill: Kill, poll_s: float = POLL_S) -> None:
        self._usage = usage
        self._kill = kill
        self._poll_s = poll_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._killed: set[str] = set()

    def start(self, sandbox_id: str, limit_bytes: int) -> None:
        self.stop(sandbox_id)
        self._tasks[sandbox_id] = asyncio.create_task(self._watch(sandbox_id, limit_bytes))

    def stop(self, sandbox_id: str) -> None:
        task = self._tasks.pop(sandbox_id, None)
        if task is not None:
            task.cancel()

    def forget(self, sandbox_id: str) -> None:
        self.stop(sandbox_id)
        self._killed.discard(sandbox_id)

    def killed(self, sandbox_id: str) -> bool:
        """Whether this watch ended the sandbox for passing its memory limit."""
        return sandbox_id in self._killed

    def close(self) -> None:
        for sandbox_id in list(self._tasks):
            self.stop(sandbox_id)

    async def _watch(self, sandbox_id: str, limit_bytes: int) -> None:
        # A failed reading (the sandbox is starting, checkpointing or gone) is not a verdict:
        # the watch ends when the runtime stops it.
        while True:
            await asyncio.sleep(self._poll_s)
            with contextlib.suppress(OSError):
                usage = await self._usage(sandbox_id)
                if usage is not None and usage > limit_bytes:
                    self._killed.add(sandbox_id)
                    log.warning("runsc.memory_limit_passed", sandbox_id=sandbox_id,
                                usage_bytes=usage, limit_bytes=limit_bytes)
                    await self._kill(sandbox_id)
                    return
