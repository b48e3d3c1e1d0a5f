"""A scripted agent for the channel's tests: the far end of the two pipes, speaking frames
as the tests dictate (well-formed or not)."""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
from collections.abc import AsyncIterator

from sandbox.adapters.runsc.agent_channel import AgentChannel
from sandbox.adapters.runsc.inside import agent as layout
from sandbox.adapters.runsc.process import open_writer
from sandbox.domain.model import Stream
from sandbox.domain.ports import OutputSink


class ScriptedAgent:
    def __init__(self, requests: asyncio.StreamReader, replies: asyncio.StreamWriter) -> None:
        self._requests = requests
        self._replies = replies

    async def request(self) -> tuple[str, int, dict[str, object]]:
        header = await self._requests.readexactly(layout.LENGTH.size)
        (length,) = layout.LENGTH.unpack(header)
        op, tag, args = marshal.loads(await self._requests.readexactly(length))
        return op, tag, args

    async def expect(self, op: str) -> tuple[int, dict[str, object]]:
        """The next request that is not a credit grant; it must be `op`."""
        while True:
            got, tag, args = await self.request()
            if got != "credit":
                assert got == op, (got, op)
                return tag, args

    async def raw(self, data: bytes) -> None:
        self._replies.write(data)
        await self._replies.drain()

    async def send(self, kind: int, tag: int, payload: bytes = b"") -> None:
        body = layout.REPLY.pack(kind, tag) + payload
        await self.raw(layout.LENGTH.pack(len(body)) + body)

    async def hello(self) -> None:
        await self.send(layout.HELLO, 0, (layout.VERSION).to_bytes(2, "big"))

    async def started(self, tag: int, pid: int = 42) -> None:
        await self.send(layout.STARTED, tag, layout.STARTED_PAYLOAD.pack(pid))

    async def out(self, tag: int, data: bytes, stream: int = layout.STDOUT) -> None:
        await self.send(layout.OUT, tag, layout.OUT_PAYLOAD.pack(stream) + data)

    async def exit(self, tag: int, code: int, signalled: bool = False) -> None:
        how = layout.SIGNALLED if signalled else layout.EXITED
        await self.send(layout.EXIT, tag, layout.EXIT_PAYLOAD.pack(how, code))

    async def error(self, tag: int, code: int, message: bytes) -> None:
        await self.send(layout.ERROR, tag, layout.ERROR_PAYLOAD.pack(code) + message)

    async def done(self, tag: int, count: int) -> None:
        await self.send(layout.DONE, tag, layout.DONE_PAYLOAD.pack(count))

    async def stat(self, tag: int, size: int, kind: int = layout.FILE) -> None:
        await self.send(layout.STAT, tag, layout.STAT_PAYLOAD.pack(kind, size, 1.5))


class Collected(OutputSink):
    """Keeps what it is given; `gate` (when cleared) holds every write until set."""

    def __init__(self) -> None:
        self.chunks: list[tuple[Stream, bytes]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, stream: Stream, data: bytes) -> None:
        await self.gate.wait()
        self.chunks.append((stream, data))

    def text(self, stream: Stream = Stream.STDOUT) -> bytes:
        return b"".join(data for kind, data in self.chunks if kind is stream)


async def _reader(fd: int, limit: int = 8 * 1024 * 1024) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                 os.fdopen(fd, "rb", buffering=0))
    return reader


class Broken(list[str]):
    """The reasons a channel broke for, and an event set at the first."""

    def __init__(self) -> None:
        super().__init__()
        self.event = asyncio.Event()


@contextlib.asynccontextmanager
async def connected(
    broken: Broken | None = None, hello: bool = True
) -> AsyncIterator[tuple[AgentChannel, ScriptedAgent]]:
    """A channel talking to a scripted agent; `broken` collects the reasons it broke for."""
    to_agent_read, to_agent_write = os.pipe()
    to_host_read, to_host_write = os.pipe()
    agent = ScriptedAgent(await _reader(to_agent_read), await open_writer(to_host_write))

    async def on_broken(reason: str) -> None:
        if broken is not None:
            broken.append(reason)
            broken.event.set()

    channel = AgentChannel("0123456789abcdef01234567", await open_writer(to_agent_write),
                           await _reader(to_host_read), on_broken)
    if hello:
        await agent.hello()
        await channel.start(timeout_s=5)
    try:
        yield channel, agent
    finally:
        await channel.close()
        agent._replies.close()
