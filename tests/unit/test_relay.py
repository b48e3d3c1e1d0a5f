"""The egress relay (inside/relay.py), run on the host as a program of its own: it joins each
connection on its loopback port to a Unix socket, closes them all when told to pause, and
serves again when told to go on. The Unix socket here stands in for the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.adapters.runsc.inside import relay

pytestmark = pytest.mark.anyio
RELAY = Path(relay.__file__)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Running:
    process: asyncio.subprocess.Process
    port: int
    seen: list[bytes]

    async def order(self, letter: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(letter)
        await self.process.stdin.drain()

    async def answer(self) -> bytes:
        assert self.process.stdout is not None
        async with asyncio.timeout(10):
            return await self.process.stdout.readexactly(1)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@contextlib.asynccontextmanager
async def running_relay(
    tmp_path: Path, serve: bool = True, answers: int = 1000
) -> AsyncIterator[Running]:
    """The relay, and behind it a stand-in proxy that answers `echo: ` + what it got, and
    closes after `answers` answers."""
    path = tmp_path / "proxy.sock"
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(answers):
                if not (data := await reader.read(65536)):
                    break
                seen.append(data)
                writer.write(b"echo: " + data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(proxy, path=str(path)) if serve else None
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", str(RELAY), str(port), str(path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    running = Running(process, port, seen)
    try:
        assert await running.answer() == b"R"
        yield running
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        if server is not None:
            server.close()
            await server.wait_closed()


async def test_a_connection_is_joined_to_the_proxy_both_ways(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relayed:
        reader, writer = await relayed.connect()
        request = b"CONNECT a.test:443 HTTP/1.1\r\n\r\n"
        writer.write(request)
        async with asyncio.timeout(10):
            answer = await reader.readexactly(6 + len(request))
            writer.write_eof()
            rest = await reader.read()
        writer.close()

    assert answer == b"echo: " + request
    assert rest == b""


async def test_pause_closes_every_connection_and_holds_new_ones_until_go(
    tmp_path: Path,
) -> None:
    async with running_relay(tmp_path) as relayed:
        reader, writer = await relayed.connect()
        writer.write(b"one")
        async with asyncio.timeout(10):
            await reader.readexactly(9)

        await relayed.order(b"p")
        paused = await relayed.answer()
        async with asyncio.timeout(10):
            ended = await reader.read()
        waiting_reader, waiting_writer = await relayed.connect()
        waiting_writer.write(b"two")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await waiting_reader.readexactly(9)
        await relayed.order(b"g")
        async with asyncio.timeout(10):
            served = await waiting_reader.readexactly(9)
        writer.close()
        waiting_writer.close()

    assert (paused, ended, served) == (b"P", b"", b"echo: two")
    assert relayed.seen == [b"one", b"two"]


async def test_without_a_proxy_to_reach_a_client_is_told_so(tmp_path: Path) -> None:
    async with running_relay(tmp_path, serve=False) as relayed:
        reader, writer = await relayed.connect()
        writer.write(b"GET http://a.test/ HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(10):
            answer = await reader.read()
        writer.close()

    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway: the sandbox's egress proxy is not")


async def test_the_relay_ends_when_the_agent_is_gone(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relayed:
        assert relayed.process.stdin is not None
        relayed.process.stdin.close()
        async with asyncio.timeout(10):
            code = await relayed.process.wait()

    assert code == 0


async def test_many_connections_at_once_each_get_their_own_answer(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relayed:
        pairs = [await relayed.connect() for _ in range(20)]
        for index, (_reader, writer) in enumerate(pairs):
            writer.write(b"n%02d" % index)
        async with asyncio.timeout(10):
            answers = [await reader.readexactly(9) for reader, _writer in pairs]
        for _reader, writer in pairs:
            writer.close()

    assert answers == [b"echo: n%02d" % index for index in range(20)]


async def test_when_the_proxy_ends_the_relay_lets_go_of_its_connection_at_once(
    tmp_path: Path,
) -> None:
    """A host-socket connection left open fails a checkpoint: one whose proxy end is done
    must not wait for the client inside to close too."""
    async with running_relay(tmp_path, answers=1) as relayed:
        descriptors = Path(f"/proc/{relayed.process.pid}/fd")
        before = len(list(descriptors.iterdir()))
        reader, writer = await relayed.connect()
        writer.write(b"one")
        async with asyncio.timeout(10):
            answer = await reader.readexactly(9)
            ended = await reader.read()
            while len(list(descriptors.iterdir())) > before:  # noqa: ASYNC110 (a count)
                await asyncio.sleep(0.01)
        writer.close()

    assert (answer, ended) == (b"echo: one", b"")
