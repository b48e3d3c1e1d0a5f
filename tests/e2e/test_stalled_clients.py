"""Clients that stall, through real uvicorn: one that never reads its stream, one that sends
its request head too slowly, and too many connections at once."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading

import httpx
from dependency_injector import providers

from e2e.scrape import sample
from e2e.support import uvicorn_serving
from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.containers import Container
from sandbox.domain.model import Outcome, Program, SandboxSpec, Stream
from sandbox.domain.ports import OutputSink
from sandbox.settings import Settings

FLOOD = b"while True: print('x' * 16384)\n"
CHUNK = b"x" * 16 * 1024 + b"\n"


class FloodingRuntime(FakeSandboxRuntime):
    """Its FLOOD script prints for ever, as fast as its sink takes it; its timer still ends it.
    Tells whether the end came while a write waited on a full sink (the client's back
    pressure reached the sandbox)."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = threading.Event()
        self.cut_mid_write = False

    async def run(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> Outcome:
        if program.source != FLOOD:
            return await super().run(spec, program, sink)
        self.live.add(spec.sandbox_id)
        writing = False
        try:
            async with asyncio.timeout(spec.limits.timeout_s):
                while True:
                    writing = True
                    await sink.write(Stream.STDOUT, CHUNK)
                    writing = False
                    await asyncio.sleep(0)
        except TimeoutError:
            self.cut_mid_write = writing
            return Outcome(exit_code=None, timed_out=True)
        finally:
            self.live.discard(spec.sandbox_id)
            self.ended.set()


def request(method: str, target: str, body: bytes = b"") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def test_a_stream_nobody_reads_ends_at_the_sandbox_timeout_and_frees_its_place(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(
        settings, max_concurrent_executions=1, capacity_wait_s=0,
        output_limit_bytes=256 * 1024 * 1024,  # the output never stops for the cap
    )
    runtime = FloodingRuntime()
    container = Container(settings=settings)
    container.runtime_adapter.override(providers.Object(runtime))

    with uvicorn_serving(settings, container) as (host, port):
        base = f"http://{host}:{port}"
        with socket.socket() as stalled:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect((host, port))
            stalled.sendall(request("POST", "/execute?language=python&stream=true&timeout=0.5",
                                    FLOOD))  # ... and never reads a byte

            assert runtime.ended.wait(10), "the sandbox outlived its timeout"
            health = httpx.get(f"{base}/healthz", timeout=5)
            # The only place for an execution is free again, though the stream still stalls.
            after = httpx.post(f"{base}/execute?language=python", content=b'print("hi")\n',
                               timeout=5)
            metrics = httpx.get(f"{base}/metrics", timeout=5).text

    assert runtime.cut_mid_write, "the client's back pressure never reached the sandbox"
    assert runtime.live == set()
    assert health.status_code == 200
    assert after.status_code == 200
    assert sample(metrics, "sandbox_executions_total", kind="execute", outcome="timed_out") == 1


def read_until_closed(client: socket.socket) -> bytes:
    answer = b""
    while chunk := client.recv(4096):
        answer += chunk
    return answer


def test_a_request_head_that_arrives_too_slowly_is_cut_off(settings: Settings) -> None:
    settings = dataclasses.replace(settings, request_read_timeout_s=0.3)

    with uvicorn_serving(settings) as address, socket.create_connection(address) as client:
        client.settimeout(5)  # longer than the deadline: a timeout here fails the test
        client.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # ... and never the rest

        assert read_until_closed(client) == b""


def test_a_connection_that_never_sends_a_request_is_closed(settings: Settings) -> None:
    settings = dataclasses.replace(settings, request_read_timeout_s=0.3)

    with uvicorn_serving(settings) as address, socket.create_connection(address) as client:
        client.settimeout(5)

        assert read_until_closed(client) == b""


def test_the_next_head_on_a_kept_alive_connection_has_the_same_deadline(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(settings, request_read_timeout_s=0.3)

    with uvicorn_serving(settings) as address, socket.create_connection(address) as client:
        client.settimeout(5)
        client.sendall(request("GET", "/healthz"))
        answer = b""
        while b'"ok"' not in answer:
            answer += client.recv(4096)
        client.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request, never finished

        assert answer.startswith(b"HTTP/1.1 200 ")
        assert read_until_closed(client) == b""


def test_connections_beyond_the_limit_are_answered_503(settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_connections=2)

    with (
        uvicorn_serving(settings) as address,
        socket.create_connection(address),  # idle, but it counts
        socket.create_connection(address) as client,
    ):
        client.settimeout(5)
        client.sendall(request("GET", "/healthz"))
        refused = client.recv(4096)

    assert refused.startswith(b"HTTP/1.1 503 ")
