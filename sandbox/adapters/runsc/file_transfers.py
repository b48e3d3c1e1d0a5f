"""The host's side of the file helpers' protocols (see files.py): one helper process,
running in a sandbox, spoken to through its pipes a chunk at a time, so that a transfer
holds a few chunks of a file in memory, never the file."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

import structlog

from sandbox.adapters.runsc import files
from sandbox.adapters.runsc.cli import RUNSC_ERROR_EXIT
from sandbox.adapters.runsc.process import Pipe, finish_pumps, pump
from sandbox.domain.errors import InvalidRequest, RuntimeFailure, SandboxError
from sandbox.domain.model import FileEntry, Stream
from sandbox.domain.ports import FILE_CHUNK_BYTES, OpenedFile, OutputSink

log = structlog.get_logger(__name__)

# How long a helper whose input ended is given to tidy up (remove a cut upload) and exit.
FINISH_GRACE_S = 10.0
STDERR_KEPT_BYTES = 2048


class _Stderr(OutputSink):
    """Keeps the start of what a helper says on stderr, for the server's log only."""

    def __init__(self) -> None:
        self.kept = bytearray()

    async def write(self, stream: Stream, data: bytes) -> None:
        self.kept += data[: max(STDERR_KEPT_BYTES - len(self.kept), 0)]


class FileHelper:
    """One helper process in a sandbox, seen from the host: its stdin (for uploads), its
    stdout, and how it ended. The runtime starts it, ends it at its deadline, and kills
    whatever is left of it when the call ends."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        stdout: Pipe,
        stderr: Pipe,
        timeout_s: float,
        sandbox_gone: Callable[[], Awaitable[bool]],
    ) -> None:
        self.process = process
        self.stdout = stdout.reader
        self._pipes = (stdout, stderr)
        self._stderr = _Stderr()
        self._pumps = [asyncio.create_task(pump(stderr, Stream.STDERR, self._stderr))]
        self._sandbox_gone = sandbox_gone
        self.timeout_s = timeout_s
        self.timed_out = False  # set by the runtime when it ends the helper at its deadline

    async def send(self, data: bytes) -> bool:
        """Writes to the helper's stdin, waiting while the pipe is full; False when the
        helper no longer reads it (it ended, or failed)."""
        writer = self.process.stdin
        if writer is None or writer.is_closing():
            return False
        try:
            writer.write(data)
            await writer.drain()
        # uvloop raises RuntimeError for a write to the pipe of a process that has exited.
        except (ConnectionError, RuntimeError):
            return False
        return True

    def close_input(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()

    async def finish(self, path: str, limit_bytes: int = 0) -> None:
        """Ends the helper's input, waits for its exit, and raises the error its exit code
        stands for."""
        self.close_input()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FINISH_GRACE_S):
                await self.process.wait()
        if self.timed_out:
            raise InvalidRequest(
                f"the file call on {path} did not finish within {self.timeout_s:g} s")
        code = self.process.returncode
        error = files.error_for(code, path, limit_bytes)
        if error is None:
            return
        if code == RUNSC_ERROR_EXIT and await self._sandbox_gone():
            raise RuntimeFailure("the sandbox is not running")
        log.warning("file_call.failed", exit_code=code,
                    stderr=self._stderr.kept.decode(errors="replace"))
        raise error

    async def close(self) -> None:
        """After the process has ended: its pipes and their readers."""
        self.close_input()
        await finish_pumps(self._pumps, grace_s=1.0)
        for pipe in self._pipes:
            pipe.transport.close()


# Write ------------------------------------------------------------------------------------


async def upload(helper: FileHelper, path: str, chunks: AsyncIterable[bytes]) -> int:
    """Streams `chunks` into the file; returns its size once the helper has put it in place.
    If `chunks` raises, the helper is told nothing more and removes what it wrote."""
    await _expect_ready(helper, path)
    written = 0
    try:
        async for chunk in chunks:
            for start in range(0, len(chunk), files.FRAME_BYTES):
                frame = chunk[start:start + files.FRAME_BYTES]
                if not await helper.send(len(frame).to_bytes(4, "big") + frame):
                    await helper.finish(path)
                    raise files.malformed(path, "an end before the file was sent")
                written += len(frame)
    except BaseException:
        with contextlib.suppress(SandboxError):
            await helper.finish(path)  # input ended without the commit: nothing is kept
        raise
    if not await helper.send(files.COMMIT):
        await helper.finish(path)
        raise files.malformed(path, "an end before the file was sent")
    await helper.finish(path)
    return written


async def _expect_ready(helper: FileHelper, path: str) -> None:
    try:
        said = await helper.stdout.readexactly(len(files.READY))
    except asyncio.IncompleteReadError:
        said = b""
    if said != files.READY:
        await helper.finish(path)  # a failure before it could start says which
        raise files.malformed(path, "no sign of readiness")


# Read -------------------------------------------------------------------------------------


async def open_download(helper: FileHelper, path: str, limit_bytes: int) -> OpenedFile:
    """Reads the size line: a refused file raises here, before a byte of it is read."""
    try:
        line = await helper.stdout.readuntil(b"\n")
    except asyncio.IncompleteReadError as error:
        await helper.finish(path, limit_bytes)
        raise files.malformed(path, "no size") from error
    except asyncio.LimitOverrunError as error:
        raise files.malformed(path, "no size") from error
    size = files.parse_size(line, path, limit_bytes)
    return OpenedFile(size, _exactly(helper, path, size))


async def _exactly(helper: FileHelper, path: str, size: int) -> AsyncIterator[bytes]:
    remaining = size
    while remaining:
        chunk = await helper.stdout.read(min(remaining, FILE_CHUNK_BYTES))
        if not chunk:
            await helper.finish(path)
            raise files.malformed(path, f"{size - remaining} of the {size} bytes it announced")
        remaining -= len(chunk)
        yield chunk
    await helper.finish(path)


# List -------------------------------------------------------------------------------------


async def listing(helper: FileHelper, path: str) -> list[FileEntry]:
    raw = bytearray()
    while chunk := await helper.stdout.read(FILE_CHUNK_BYTES):
        raw += chunk
        if len(raw) > files.MAX_LIST_BYTES:  # not believed: the runtime ends the helper
            raise files.malformed(path, "a listing too large")
    await helper.finish(path)
    return files.parse_listing(bytes(raw), path)
