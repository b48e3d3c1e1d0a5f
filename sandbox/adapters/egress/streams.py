"""Moving bytes: reads that give up after the connection's idle time, pumps that count every
byte against the sandbox's allowance before they pass, and a pair of pumps for a tunnel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sandbox.adapters.egress.allowance import Allowance
from sandbox.adapters.egress.outcome import Cut, Report

CHUNK = 64 * 1024


class Activity:
    """The last time a byte moved either way: a download keeps its upload side alive."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    async def read(self, reader: asyncio.StreamReader) -> bytes:
        while True:
            left = self.idle_s - (time.monotonic() - self.last)
            if left <= 0:
                raise Cut("cut_idle", f"no bytes either way for {self.idle_s:g} s")
            try:
                async with asyncio.timeout(left):
                    data = await reader.read(CHUNK)
            except TimeoutError:
                continue  # the other direction may have moved meanwhile
            self.touch()
            return data


class Meter:
    """Counts one connection's bytes into its report and the sandbox's allowance."""

    def __init__(self, report: Report, allowance: Allowance) -> None:
        self._report = report
        self._allowance = allowance

    def sent(self, size: int) -> None:
        self._allowance.count_sent(size)
        self._report.sent += size

    def received(self, size: int) -> None:
        self._allowance.count_received(size)
        self._report.received += size


async def pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    count: Callable[[int], None],
    activity: Activity,
) -> None:
    """Copy until end of file, then pass the end on (a half-close)."""
    while data := await activity.read(reader):
        count(len(data))
        writer.write(data)
        await writer.drain()
        activity.touch()
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


async def until_done(
    *coroutines: Coroutine[Any, Any, None], first_ends_all: bool = False
) -> None:
    """Run side by side; the first failure ends the rest and is raised. With
    `first_ends_all`, the first to finish at all ends the rest."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    when = asyncio.FIRST_COMPLETED if first_ends_all else asyncio.FIRST_EXCEPTION
    try:
        done, _pending = await asyncio.wait(tasks, return_when=when)
        for task in done:
            task.result()
        if not first_ends_all:
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
