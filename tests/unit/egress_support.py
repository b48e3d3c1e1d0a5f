"""Loopback servers and a client for the egress proxy's tests: a server that echoes, one that
answers plain HTTP and records what it was asked, and a client that speaks to the proxy's
Unix socket as a sandbox's relay would."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.adapters.egress.allowance import EgressLimits
from sandbox.adapters.egress.proxy import SOCKET_NAME, EgressProxy
from sandbox.adapters.egress.resolver import Lookup, Resolver
from sandbox.domain.egress import EgressPolicy, parse_host_map
from sandbox.domain.metrics import EgressVerdict, NoMetrics

SANDBOX_ID = "0123456789abcdef01234567"


@dataclass
class Upstream:
    port: int
    requests: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[Upstream]:
    upstream = Upstream(0)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    async with server:
        yield upstream


@contextlib.asynccontextmanager
async def http_server(answer: bytes) -> AsyncIterator[Upstream]:
    """Answers every request with `answer` and closes; keeps each request's head."""
    upstream = Upstream(0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        upstream.requests.append(head)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    async with server:
        yield upstream


class RecordingMetrics(NoMetrics):
    def __init__(self) -> None:
        self.connections: list[tuple[EgressVerdict, int, int]] = []

    def egress_connection(
        self, verdict: EgressVerdict, sent: int, received: int, seconds: float
    ) -> None:
        self.connections.append((verdict, sent, received))


@dataclass
class Proxied:
    proxy: EgressProxy
    folder: Path
    metrics: RecordingMetrics

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # Through the folder's descriptor, as gVisor's gofer does: the path may be too long.
        descriptor = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return await asyncio.open_unix_connection(f"/proc/self/fd/{descriptor}/{SOCKET_NAME}")
        finally:
            os.close(descriptor)

    async def ask(self, request: bytes) -> bytes:
        """Send one request and read until the proxy closes."""
        reader, writer = await self.connect()
        writer.write(request)
        async with asyncio.timeout(10):
            answer = await reader.read()
        writer.close()
        return answer

    async def head(self, request: bytes) -> bytes:
        """Send one request and read the answer's head (a tunnel stays open until closed)."""
        reader, writer = await self.connect()
        writer.write(request)
        async with asyncio.timeout(10):
            try:
                answer = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as short:
                answer = short.partial
        writer.close()
        return answer

    async def settled(self) -> None:
        """Until every connection the proxy holds has been recorded."""
        async with asyncio.timeout(10):
            # A count the proxy keeps, with no event to wait on: polled, boundedly.
            while self.proxy.connections(SANDBOX_ID):  # noqa: ASYNC110
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def proxied(
    tmp_path: Path,
    allow: str,
    hosts: str = "",
    lookup: Lookup | None = None,
    operator: str | None = None,
    **limits: float,
) -> AsyncIterator[Proxied]:
    metrics = RecordingMetrics()
    resolver = (Resolver(parse_host_map(hosts), 2.0) if lookup is None
                else Resolver(parse_host_map(hosts), 2.0, lookup))
    proxy = EgressProxy(EgressLimits(**limits), resolver, metrics,  # type: ignore[arg-type]
                        None if operator is None else EgressPolicy.from_text(operator))
    folder = tmp_path / "egress"
    await proxy.open(SANDBOX_ID, EgressPolicy.from_text(allow), folder, os.getuid())
    try:
        yield Proxied(proxy, folder, metrics)
    finally:
        await proxy.close_all()
