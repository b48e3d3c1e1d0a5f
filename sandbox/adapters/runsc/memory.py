"""The memory limit on a host without usable cgroups.

runsc then runs with `--ignore-cgroups` and no kernel holds the limit: measured here, a script
limited to 256 MiB allocated 2 GiB and exited 0. `MemoryWatch` is the layer left: it kills a
sandbox past its limit, reading two measures:
- gVisor's memory file, every FAST_POLL_S: the memfd (`runsc-memory`) that holds all the
  sandbox's application memory, root overlay and tmpfs files included; its allocated size is
  one stat of /proc/<sentry pid>/fd/N (microseconds, no process started);
- gVisor's own accounting (`runsc events --stats`, which answers without cgroups, but starts
  runsc: 30 to 40 ms here) every POLL_S, which also counts what lives outside that file.
It acts between readings, so a sandbox can overshoot by what it allocates in one interval
(measured here for a bomb allocating as fast as Python can: before, polling only the
accounting every 0.25 s, a 64 MiB sandbox was seen at 89 MiB and a 256 MiB one at 347 MiB;
see the README for the figures with the memory file). The sentry's own bookkeeping is in
neither measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

POLL_S = 0.25
FAST_POLL_S = 0.02
# How gVisor names the memfd of a sandbox's memory, as /proc shows its link.
MEMORY_FILE_LINK = "/memfd:runsc-memory (deleted)"

Usage = Callable[[str], Awaitable[int | None]]
Kill = Callable[[str], Awaitable[None]]
# The host pid of a sandbox's sentry (the process holding its memory file), if it runs.
SentryPid = Callable[[str], Awaitable[int | None]]


def memory_file_of(pid: int, proc: Path = Path("/proc")) -> Path | None:
    """The /proc path of the sentry's memory file, or None (not found, or gone)."""
    with contextlib.suppress(OSError), os.scandir(proc / str(pid) / "fd") as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if os.readlink(entry.path) == MEMORY_FILE_LINK:
                    return Path(entry.path)
    return None


@dataclass
class Sentry:
    """A sandbox's sentry as the watch reads it: its memory file, and a pidfd to kill it at
    once (`runsc kill` takes tens of milliseconds, in which a bomb allocates tens of MiB;
    a pidfd cannot hit another process that got the pid after the sentry ended)."""

    memory_file: Path
    pidfd: int

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


def sentry_of(pid: int) -> Sentry | None:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    memory_file = memory_file_of(pid)  # looked for after the pidfd: the pid is the sentry's
    if memory_file is None:
        os.close(pidfd)
        return None
    return Sentry(memory_file, pidfd)


def committed_bytes(memory_file: Path) -> int | None:
    """What the memory file holds now: its allocated blocks (freed pages are given back)."""
    try:
        return os.stat(memory_file).st_blocks * 512
    except OSError:
        return None


class MemoryWatch:
    def __init__(
        self, usage: Usage, kill: Kill, poll_s: float = POLL_S,
        sentry_pid: SentryPid | None = None, fast_poll_s: float = FAST_POLL_S,
    ) -> None:
        self._usage = usage
        self._kill = kill
        self._poll_s = poll_s
        self._sentry_pid = sentry_pid
        self._fast_poll_s = fast_poll_s
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
        # the watch ends when the runtime stops it. The sentry is looked for at once (a bomb
        # fills a small limit within a tenth of a second of its start), then again whenever
        # its memory file cannot be read.
        sentry = await self._find_sentry(sandbox_id)
        next_accounting = time.monotonic() + self._poll_s
        try:
            while True:
                await asyncio.sleep(self._fast_poll_s)
                if sentry is None:
                    sentry = await self._find_sentry(sandbox_id)
                committed = committed_bytes(sentry.memory_file) if sentry else None
                if sentry is not None and committed is None:
                    sentry.close()
                    sentry = None
                elif sentry is not None and committed is not None and committed > limit_bytes:
                    sentry.kill()
                    await self._passed(sandbox_id, committed, limit_bytes)
                    return
                if time.monotonic() < next_accounting:
                    continue
                next_accounting = time.monotonic() + self._poll_s
                with contextlib.suppress(OSError):
                    usage = await self._usage(sandbox_id)
                    if usage is not None and usage > limit_bytes:
                        await self._passed(sandbox_id, usage, limit_bytes)
                        return
        finally:
            if sentry is not None:
                sentry.close()

    async def _find_sentry(self, sandbox_id: str) -> Sentry | None:
        if self._sentry_pid is None:
            return None
        with contextlib.suppress(OSError):
            pid = await self._sentry_pid(sandbox_id)
            return await asyncio.to_thread(sentry_of, pid) if pid else None
        return None

    async def _passed(self, sandbox_id: str, usage: int, limit_bytes: int) -> None:
        self._killed.add(sandbox_id)
        log.warning("runsc.memory_limit_passed", sandbox_id=sandbox_id, usage_bytes=usage,
                    limit_bytes=limit_bytes)
        await self._kill(sandbox_id)
