"""Supervising one runsc process: its pipes, its timer, and its end."""

from __future__ import annotations

import asyncio
import contextlib

from sandbox.domain.model import Stream
from sandbox.domain.ports import OutputSink

READ_CHUNK = 64 * 1024
# After the process ends, its pipes normally close at once; a grand-child that inherited
# them (runsc's own helpers) must not keep the caller waiting.
DRAIN_GRACE_S = 2.0


async def pump(reader: asyncio.StreamReader | None, stream: Stream, sink: OutputSink) -> None:
    """Copy a pipe to the sink until EOF, as bytes; the sink decides what to keep."""
    if reader is None:
        return
    while chunk := await reader.read(READ_CHUNK):
        await sink.write(stream, chunk)


async def finish_pumps(pumps: list[asyncio.Task[None]]) -> None:
    done, pending = await asyncio.wait(pumps, timeout=DRAIN_GRACE_S)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for task in done:
        task.result()


async def wait_or_kill(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """Wait for a process we started; SIGKILL it by its own pid if it does not end."""
    try:
        async with asyncio.timeout(grace_s):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
