"""Supervising one runsc process: its pipes, its timer, and its end."""

from __future__ import annotations

import asyncio
import contextlib
import os

from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.model import Stream
from sandbox.domain.ports import OutputSink

READ_CHUNK = 64 * 1024
# After the process ends, its pipes normally close at once; a grand-child that inherited
# them (runsc's own helpers) must not keep the caller waiting.
DRAIN_GRACE_S = 2.0


class Pipe:
    """Our end of a pipe whose other end a sandbox may hold, read without blocking."""

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.BaseTransport) -> None:
        self.reader = reader
        self.transport = transport


async def pump(pipe: Pipe, stream: Stream, sink: OutputSink) -> None:
    """Copy a pipe to the sink until EOF, as bytes; the sink decides what to keep."""
    try:
        while chunk := await pipe.reader.read(READ_CHUNK):
            await sink.write(stream, chunk)
    finally:
        pipe.transport.close()


async def finish_pumps(pumps: list[asyncio.Task[None]], grace_s: float = DRAIN_GRACE_S) -> None:
    if not pumps:
        return
    done, pending = await asyncio.wait(pumps, timeout=grace_s)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for task in done:
        task.result()


async def _open_pipe(read_fd: int, limit: int = READ_CHUNK) -> Pipe:
    # asyncio's own subprocess pipes make `Process.wait()` wait until the pipes close too, and
    # a detached sandbox (or a daemon an exec left behind) keeps them open after runsc returns.
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: protocol, os.fdopen(read_fd, "rb", buffering=0)
    )
    return Pipe(reader, transport)


async def spawn(
    argv: list[str], stdin: int = asyncio.subprocess.DEVNULL, stdout_limit: int = READ_CHUNK
) -> tuple[asyncio.subprocess.Process, Pipe, Pipe]:
    """Start a process whose stdout and stderr are pipes read through `pipe_reader`."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=out_write, stderr=err_write
        )
    except BaseException as error:
        os.close(out_read)
        os.close(err_read)
        if isinstance(error, OSError):
            raise RuntimeFailure(f"cannot start {argv[0]}: {error.strerror}") from error
        raise
    finally:
        os.close(out_write)
        os.close(err_write)
    return process, await _open_pipe(out_read, stdout_limit), await _open_pipe(err_read)


async def open_writer(write_fd: int) -> asyncio.StreamWriter:
    """Our end of a pipe we write to, with `drain()` waiting while the reader is behind."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(loop=loop), os.fdopen(write_fd, "wb", buffering=0)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop)


async def spawn_with_stdin(
    argv: list[str], stdout_limit: int
) -> tuple[asyncio.subprocess.Process, asyncio.StreamWriter, Pipe, Pipe]:
    """Start a process we talk to: its stdin, stdout and stderr are all pipes of ours."""
    in_read, in_write = os.pipe()
    try:
        process, stdout, stderr = await spawn(argv, stdin=in_read, stdout_limit=stdout_limit)
    except BaseException:
        os.close(in_write)
        raise
    finally:
        os.close(in_read)
    return process, await open_writer(in_write), stdout, stderr


async def wait_or_kill(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """Wait for a process we started; SIGKILL it by its own pid if it does not end."""
    try:
        async with asyncio.timeout(grace_s):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
