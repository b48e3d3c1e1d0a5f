"""The service's end of one sandbox's agent: requests and their answers, the processes it
runs with their output, and files moved in chunks.

The agent is inside the sandbox, within the tenant's reach. The channel therefore allows it
only what the protocol allows (one answer per request, output within the credit granted,
one exit per process), bounds every wait, throttles a flood of frames, and on anything else
breaks: every waiter gets a `RuntimeFailure` and `on_broken` is told why, so the runtime can
end that sandbox and only that one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from sandbox.adapters.runsc import agent_frames as frames
from sandbox.adapters.runsc.agent_frames import FileStat, Frame, LiveProcess, ProtocolViolation
from sandbox.adapters.runsc.inside import agent as layout
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.model import FileEntry, Stream
from sandbox.domain.ports import OutputSink

log = structlog.get_logger(__name__)

# Output the agent may send ahead for one process before the service has consumed it.
WINDOW = 256 * 1024
# Frames a second beyond which the channel stops reading for a while (a flood of tiny frames
# costs the server more than their bytes say).
FRAMES_PER_S = 20_000
MAX_REQUEST_CHUNK = 1024 * 1024
MAX_SYNC_SCAN = 4 * 1024 * 1024
MAIN_TAG = 1
PROTOCOL_VERSION = layout.VERSION

OnBroken = Callable[[str], Awaitable[None]]
T = TypeVar("T")


class AgentError(Exception):
    """The agent answered a request with an error (errno-like code and its message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


@dataclass
class _Process:
    tag: int
    sink: OutputSink
    granted: int
    received: int = 0
    queue: asyncio.Queue[tuple[Stream, bytes] | None] = field(default_factory=asyncio.Queue)
    exit_code: int | None = None
    exited: bool = False
    delivery: asyncio.Task[None] | None = None


@dataclass
class _Download:
    granted: int
    limit: int
    received: int = 0
    ended: bool = False
    queue: asyncio.Queue[bytes | Exception | None] = field(default_factory=asyncio.Queue)


class AgentChannel:
    def __init__(
        self,
        sandbox_id: str,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        on_broken: OnBroken | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self._writer = writer
        self._reader = reader
        self._on_broken = on_broken
        # Set while the service ends or checkpoints the sandbox: the pipe closing is expected.
        self.ending = False
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._processes: dict[int, _Process] = {}
        self._downloads: dict[int, _Download] = {}
        self._closing: dict[int, _Download] = {}
        self._tags = itertools.count(MAIN_TAG + 1)
        self.broken: str | None = None
        self._reading: asyncio.Task[None] | None = None
        self._budget = float(FRAMES_PER_S)
        self._budget_at = time.monotonic()

    # Starting and stopping --------------------------------------------------------------

    async def start(self, timeout_s: float) -> None:
        """Wait for the agent's hello (a new sandbox), then read its frames."""
        try:
            async with asyncio.timeout(timeout_s):
                hello = await self._next_frame()
        except (TimeoutError, ProtocolViolation, asyncio.IncompleteReadError) as error:
            raise await self._fail(f"the agent did not start: {_why(error)}") from None
        if hello.kind != layout.HELLO or frames.hello_version(hello.payload) != PROTOCOL_VERSION:
            raise await self._fail("the agent answered its start with something else")
        self._reading = asyncio.create_task(self._read_forever())

    async def resume(self, timeout_s: float) -> dict[int, LiveProcess]:
        """After a restore: find the stream's new start and the processes still running."""
        nonce = secrets.token_hex(16).encode()
        tag = next(self._tags)
        self._send(frames.request("resume", tag, nonce=nonce))
        try:
            async with asyncio.timeout(timeout_s):
                await self._reader.readuntil(layout.SYNC + nonce)
                answer = await self._next_frame()
        except (TimeoutError, ProtocolViolation, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as error:
            raise await self._fail(f"the agent did not resume: {_why(error)}") from None
        if answer.kind != layout.PROCS or answer.tag != tag:
            raise await self._fail("the agent answered resume with something else")
        live = await self._decoded(frames.procs, answer.payload)
        self._tags = itertools.count(max([tag, *live]) + 1)
        self._reading = asyncio.create_task(self._read_forever())
        return live

    async def pause(self, timeout_s: float) -> None:
        """Make the agent fall silent before a checkpoint, with its output delivered."""
        await self._ask("pause", layout.PAUSED, timeout_s)
        for process in self._processes.values():
            await process.queue.join()

    async def unpause(self, timeout_s: float) -> None:
        """Undo `pause` when the checkpoint failed and the sandbox runs on."""
        await self._ask("unpause", layout.DONE, timeout_s)

    async def start_relay(self, argv: list[str], timeout_s: float) -> None:
        """Start the egress relay inside (as its own user); returns once it listens."""
        await self._ask("relay", layout.DONE, timeout_s, argv=argv)

    async def close(self) -> None:
        """Stop reading (the sandbox is ending or being checkpointed); waiters get a failure."""
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        self._writer.close()
        self._end_waiters("the sandbox's agent is gone")

    # Processes --------------------------------------------------------------------------

    async def spawn(
        self,
        argv: list[str],
        env: list[str],
        cwd: str,
        sink: OutputSink,
        timeout_s: float,
        stdin: bool = False,
        main: bool = False,
        control: bool = False,
        forked_script: str | None = None,
        last: bool = False,
        label: bytes = b"",
    ) -> int:
        """Start a program; its output goes to `sink`. Returns its tag. With `forked_script`
        (a Python script run as argv would run it), the session's zygote forks it if it
        can; the agent starts argv otherwise. With `last`, every other process of the
        sandbox is killed when it ends (as when an init ends). `label` is told back with
        the process by `resume`, after a restore."""
        tag = MAIN_TAG if main else next(self._tags)
        process = self._track(tag, sink, WINDOW)
        try:
            answer = await self._ask(
                "spawn", layout.STARTED, timeout_s, tag=tag, argv=argv, cwd=cwd, stdin=stdin,
                env=[item.encode() for item in env], credit=WINDOW, control=control, last=last,
                zygote=forked_script is not None, script=forked_script or "", label=label,
            )
        except BaseException:
            self._forget(process)
            raise
        await self._decoded(frames.started_pid, answer.payload)
        return tag

    async def start_zygote(
        self, argv: list[str], env: list[str], cwd: str, timeout_s: float
    ) -> None:
        """Start the interpreter Python execs are forked from (see inside/zygote.py)."""
        await self._ask("zygote", layout.DONE, timeout_s, argv=argv, cwd=cwd,
                        env=[item.encode() for item in env])

    def adopt(self, tag: int, sink: OutputSink) -> None:
        """Follow a process that ran before a checkpoint. Its remaining credit is unknown:
        the agent may hold up to a window, and gets one more, so it can always go on."""
        self._track(tag, sink, 2 * WINDOW)
        self._send(frames.request("credit", tag, bytes=WINDOW))

    async def feed(self, tag: int, data: bytes) -> None:
        """A process's whole stdin: the data, then its end."""
        await self.send_input(tag, data)
        self._send(frames.request("stdin_close", tag))

    async def send_input(self, tag: int, data: bytes) -> None:
        """More of a process's stdin, which stays open (a code context's next request)."""
        for start in range(0, len(data), MAX_REQUEST_CHUNK):
            self._send(frames.request("stdin", tag, data=data[start:start + MAX_REQUEST_CHUNK]))
            await self._drain()

    async def control(self, tag: int, data: bytes) -> None:
        self._send(frames.request("control", tag, data=data))
        await self._drain()

    def signal(self, tag: int, signal_number: int) -> None:
        self._send(frames.request("signal", tag, signal=signal_number))

    def kill(self, tag: int) -> None:
        self._send(frames.request("kill", tag))

    async def wait(self, tag: int) -> int:
        """The process's exit code, once all its output reached its sink."""
        process = self._processes[tag]
        assert process.delivery is not None
        await asyncio.wait({process.delivery})  # it ends at the exit, or when the channel breaks
        self._forget(process)
        if not process.exited or process.exit_code is None:
            raise RuntimeFailure(f"the sandbox's agent stopped: {self.broken}")
        return process.exit_code

    def _track(self, tag: int, sink: OutputSink, granted: int) -> _Process:
        if tag in self._processes:
            raise RuntimeFailure(f"tag {tag} is in use")
        process = _Process(tag, sink, granted)
        process.delivery = asyncio.create_task(self._deliver(process))
        self._processes[tag] = process
        return process

    def _forget(self, process: _Process) -> None:
        if self._processes.get(process.tag) is process:
            del self._processes[process.tag]
        if process.delivery is not None and not process.delivery.done():
            process.delivery.cancel()

    async def _deliver(self, process: _Process) -> None:
        """Hands output to the sink in order and gives the agent credit back as it goes, so
        a slow sink holds up its own process only."""
        consumed = 0
        while (item := await process.queue.get()) is not None:
            stream, data = item
            try:
                await process.sink.write(stream, data)
            finally:
                process.queue.task_done()
            consumed += len(data)
            if consumed >= WINDOW // 2 and not process.exited and self.broken is None:
                process.granted += consumed
                self._send(frames.request("credit", process.tag, bytes=consumed))
                consumed = 0
        process.queue.task_done()

    # Files ------------------------------------------------------------------------------

    async def stat(self, path: str, timeout_s: float) -> FileStat:
        answer = await self._ask("stat", layout.STAT, timeout_s, path=path)
        return await self._decoded(frames.stat, answer.payload)

    async def list_files(self, path: str, most: int, timeout_s: float) -> list[FileEntry]:
        answer = await self._ask("list", layout.ENTRIES, timeout_s, path=path, max=most)
        return await self._decoded(frames.entries, answer.payload)

    @contextlib.asynccontextmanager
    async def read_file(
        self, path: str, limit: int, timeout_s: float
    ) -> AsyncIterator[tuple[FileStat, AsyncIterator[bytes]]]:
        """The file's size, then its bytes in chunks as the caller takes them."""
        tag = next(self._tags)
        download = _Download(granted=min(WINDOW, limit), limit=limit)
        self._downloads[tag] = download
        try:
            answer = await self._ask("read", layout.STAT, timeout_s, tag=tag, path=path,
                                     limit=limit, credit=download.granted)
            info = await self._decoded(frames.stat, answer.payload)
            if info.size > limit:
                raise await self._fail("the agent sent a file over the limit it was given")
            yield info, self._chunks(tag, download, timeout_s)
        finally:
            if self._downloads.pop(tag, None) is not None and not download.ended:
                # Left half-way: what the agent sends until it has closed the file (within
                # the credit it holds) is dropped.
                self._closing[tag] = download
                self._send(frames.request("close", tag))

    async def _chunks(
        self, tag: int, download: _Download, timeout_s: float
    ) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(timeout_s):
                    item = await download.queue.get()
            except TimeoutError:
                raise await self._fail("the agent stopped sending a file") from None
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item
            download.granted += len(item)
            self._send(frames.request("credit", tag, bytes=len(item)))

    async def write_file(
        self, path: str, chunks: AsyncIterator[bytes], timeout_s: float
    ) -> int:
        """Stream chunks into a part file the agent renames at the end; the size written."""
        tag = next(self._tags)
        await self._ask("write", layout.DONE, timeout_s, tag=tag, path=path)
        final = self._expect(tag)
        try:
            async for chunk in chunks:
                for start in range(0, len(chunk), MAX_REQUEST_CHUNK):
                    if final.done():
                        break  # the agent refused the upload part-way; its answer says why
                    piece = chunk[start:start + MAX_REQUEST_CHUNK]
                    self._send(frames.request("data", tag, data=piece))
                    await self._drain()
            if not final.done():
                self._send(frames.request("end", tag))
            answer = await self._answer(final, layout.DONE, timeout_s)
        except BaseException:
            if not final.done():
                self._send(frames.request("abort", tag))
            self._pending.pop(tag, None)
            raise
        return await self._decoded(frames.count, answer.payload)

    # Requests and answers ---------------------------------------------------------------

    async def _ask(
        self, op: str, expected: int | None, timeout_s: float, tag: int | None = None,
        **args: object,
    ) -> Frame:
        tag = next(self._tags) if tag is None else tag
        answer = self._expect(tag)
        self._send(frames.request(op, tag, **args))
        await self._drain()
        return await self._answer(answer, expected, timeout_s)

    def _expect(self, tag: int) -> asyncio.Future[Frame]:
        if self.broken is not None:
            raise RuntimeFailure(f"the sandbox's agent is unusable: {self.broken}")
        answer = asyncio.get_running_loop().create_future()
        self._pending[tag] = answer
        return answer

    async def _answer(
        self, answer: asyncio.Future[Frame], expected: int | None, timeout_s: float
    ) -> Frame:
        try:
            async with asyncio.timeout(timeout_s):
                frame = await answer
        except TimeoutError:
            raise await self._fail("the agent did not answer in time") from None
        if frame.kind == layout.ERROR:
            raise AgentError(*await self._decoded(frames.error, frame.payload))
        if expected is not None and frame.kind != expected:
            raise await self._fail(f"the agent answered with a frame of kind {frame.kind}")
        return frame

    async def _decoded(self, decode: Callable[[bytes], T], payload: bytes) -> T:
        try:
            return decode(payload)
        except ProtocolViolation as violation:
            raise await self._fail(f"the agent broke the protocol: {violation}") from None

    def _send(self, data: bytes) -> None:
        if self.broken is None and not self._writer.is_closing():
            self._writer.write(data)

    async def _drain(self) -> None:
        """Wait while the agent is behind reading what was sent."""
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError):
            raise await self._fail("the agent's pipe closed") from None

    # Reading ----------------------------------------------------------------------------

    async def _next_frame(self) -> Frame:
        header = await self._reader.readexactly(layout.LENGTH.size)
        body = await self._reader.readexactly(frames.body_length(header))
        return frames.frame(body)

    async def _read_forever(self) -> None:
        try:
            while True:
                await self._throttle()
                self._dispatch(await self._next_frame())
        except asyncio.IncompleteReadError:
            await self._fail("the agent's pipe closed")
        except ProtocolViolation as violation:
            await self._fail(f"the agent broke the protocol: {violation}")

    async def _throttle(self) -> None:
        now = time.monotonic()
        self._budget = min(FRAMES_PER_S, self._budget + (now - self._budget_at) * FRAMES_PER_S)
        self._budget_at = now
        if self._budget < 1:
            await asyncio.sleep((1 - self._budget) / FRAMES_PER_S)
        self._budget -= 1

    def _dispatch(self, frame: Frame) -> None:
        if frame.tag in self._closing and frame.tag not in self._pending:
            self._on_closing(frame)
        elif frame.kind == layout.OUT:
            self._on_output(frame)
        elif frame.kind == layout.EXIT:
            self._on_exit(frame)
        elif frame.tag in self._downloads and frame.kind in (layout.DATA, layout.DONE) \
                and frame.tag not in self._pending:
            self._on_download(frame)
        elif frame.tag in self._downloads and frame.kind == layout.ERROR \
                and frame.tag not in self._pending:
            self._downloads[frame.tag].ended = True
            self._downloads[frame.tag].queue.put_nowait(AgentError(*frames.error(frame.payload)))
        else:
            answer = self._pending.pop(frame.tag, None)
            if answer is None or answer.done():
                raise ProtocolViolation(f"an answer nobody asked for (kind {frame.kind})")
            answer.set_result(frame)

    def _on_output(self, frame: Frame) -> None:
        process = self._processes.get(frame.tag)
        if process is None or process.exited:
            raise ProtocolViolation("output of no running process")
        stream, data = frames.output(frame.payload)
        process.received += len(data)
        if process.received > process.granted:
            raise ProtocolViolation("output beyond the credit granted")
        process.queue.put_nowait((stream, data))

    def _on_exit(self, frame: Frame) -> None:
        process = self._processes.get(frame.tag)
        if process is None or process.exited:
            raise ProtocolViolation("an exit of no running process")
        process.exit_code = frames.exit_code(frame.payload)
        process.exited = True
        process.queue.put_nowait(None)

    def _on_closing(self, frame: Frame) -> None:
        download = self._closing[frame.tag]
        if frame.kind == layout.DATA:
            download.received += len(frame.payload)
            if download.received > min(download.granted, download.limit):
                raise ProtocolViolation("file data beyond the credit or the limit")
        elif frame.kind in (layout.DONE, layout.ERROR):
            del self._closing[frame.tag]
        else:
            raise ProtocolViolation(f"a frame of kind {frame.kind} for a closed file")

    def _on_download(self, frame: Frame) -> None:
        download = self._downloads[frame.tag]
        if frame.kind == layout.DATA:
            download.received += len(frame.payload)
            if download.received > min(download.granted, download.limit):
                raise ProtocolViolation("file data beyond the credit or the limit")
            download.queue.put_nowait(frame.payload)
        else:
            if frames.count(frame.payload) != download.received:
                raise ProtocolViolation("a file's end that does not match its data")
            download.ended = True
            download.queue.put_nowait(None)

    # Breaking ---------------------------------------------------------------------------

    async def _fail(self, reason: str) -> RuntimeFailure:
        if self.broken is None:
            self.broken = reason
            if self.ending:
                log.info("agent.closed", sandbox_id=self.sandbox_id, reason=reason)
            else:
                log.warning("agent.broken", sandbox_id=self.sandbox_id, reason=reason)
            self._end_waiters(reason)
            if self._on_broken is not None:
                await self._on_broken(reason)
        return RuntimeFailure(f"the sandbox's agent is unusable: {self.broken}")

    def _end_waiters(self, reason: str) -> None:
        self.broken = self.broken or reason
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(RuntimeFailure(f"the sandbox's agent stopped: {reason}"))
        self._pending.clear()
        for process in self._processes.values():
            process.exited = True
            if process.delivery is not None:
                process.delivery.cancel()  # a sink may be stuck; nobody will take the rest
        for download in self._downloads.values():
            download.queue.put_nowait(RuntimeFailure(f"the sandbox's agent stopped: {reason}"))


def _why(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no answer in time"
    if isinstance(error, asyncio.IncompleteReadError):
        return "its pipe closed"
    return str(error) or type(error).__name__
