"""Clients that TestClient cannot play: ones that leave before their answer, one that sends too
slowly, one whose request is framed two ways."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Callable

import anyio
import httpx
import pytest
from dependency_injector import providers
from starlette.types import Message
from structlog.typing import EventDict

from e2e.support import fake_runtime_of, post_scope, running, uvicorn_serving
from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.containers import Container
from sandbox.domain.model import Outcome, Program
from sandbox.domain.ports import OutputSink
from sandbox.settings import Settings


@pytest.mark.anyio
async def test_a_client_that_leaves_mid_stream_ends_its_sandbox(
    settings: Settings, logs: list[EventDict]
) -> None:
    body = [{"type": "http.request", "body": b"import time\ntime.sleep(5)\n"}]
    first_line_sent = anyio.Event()
    sent: list[Message] = []

    async def receive() -> Message:
        if body:
            return body.pop()
        await first_line_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message.get("body"):
            first_line_sent.set()

    async with running(settings) as (app, runtime):
        # Well before the script's 5 s: leaving must end the execution, not wait for it.
        with anyio.fail_after(3):
            await app(post_scope("/execute", b"language=python&stream=true"), receive, send)

        assert len(runtime.runs) == 1
        assert runtime.live == set()
    lines = [json.loads(message["body"]) for message in sent if message.get("body")]
    assert [line["type"] for line in lines] == ["start"]
    cancelled = next(entry for entry in logs if entry["event"] == "execution.cancelled")
    assert cancelled["sandbox_id"] == lines[0]["sandbox_id"]


@pytest.mark.anyio
async def test_a_body_that_arrives_too_slowly_is_a_408(settings: Settings) -> None:
    settings = dataclasses.replace(settings, request_read_timeout_s=0.2)
    chunks = [{"type": "http.request", "body": b"print(", "more_body": True}]
    sent: list[Message] = []

    async def receive() -> Message:
        if chunks:
            return chunks.pop()
        await anyio.sleep(5)
        return {"type": "http.request", "body": b'"late")\n'}

    async def send(message: Message) -> None:
        sent.append(message)

    async with running(settings) as (app, runtime):
        with anyio.fail_after(3):
            await app(post_scope("/execute", b"language=python"), receive, send)

        assert runtime.runs == []
    start, body = sent
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"])["error"]["code"] == "request_timeout"


def test_uvicorn_cuts_off_a_client_that_stops_sending_its_body(settings: Settings) -> None:
    settings = dataclasses.replace(settings, request_read_timeout_s=0.3)
    head = (
        b"POST /execute?language=python HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Length: 100\r\n\r\nprint("
    )

    with uvicorn_serving(settings) as address, socket.create_connection(address) as client:
        client.settimeout(5)
        client.sendall(head)  # ... and never the other 94 bytes
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request_timeout"' in answer


# A client that leaves while its plain (not streamed) answer is being worked out -----------

LONG_SCRIPT = b"import time\ntime.sleep(60)\n"


def eventually(check: Callable[[], object], what: str, within_s: float = 10.0) -> None:
    """Polls for a state change; the bound is against hangs, far beyond the time needed."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s:g} s"
        time.sleep(0.02)


def send_and_leave(address: tuple[str, int], request: bytes, started: Callable[[], object]) -> None:
    """Sends a whole request, waits until the server works on it, then hangs up unanswered."""
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(request)
        eventually(started, "the start of the work")


def raw_post(target: str, body: bytes, content_type: str = "text/plain") -> bytes:
    return (f"POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_a_client_that_leaves_a_plain_execute_ends_its_sandbox(
    settings: Settings, logs: list[EventDict]
) -> None:
    container = Container(settings=settings)
    runtime = fake_runtime_of(container)

    with uvicorn_serving(settings, container) as address:
        send_and_leave(address, raw_post("/execute?language=python", LONG_SCRIPT),
                       started=lambda: runtime.live)
        eventually(lambda: not runtime.live, "the end of the abandoned sandbox")

        assert len(runtime.runs) == 1
    assert any(entry["event"] == "http.client_left" for entry in logs)


class ExecCountingRuntime(FakeSandboxRuntime):
    """Counts the execs running now."""

    def __init__(self) -> None:
        super().__init__()
        self.execs_running = 0

    async def exec(
        self, sandbox_id: str, program: Program, sink: OutputSink, stdin: bytes, timeout_s: float
    ) -> Outcome:
        self.execs_running += 1
        try:
            return await super().exec(sandbox_id, program, sink, stdin, timeout_s)
        finally:
            self.execs_running -= 1


def test_a_client_that_leaves_a_plain_exec_ends_that_exec(settings: Settings) -> None:
    runtime = ExecCountingRuntime()
    container = Container(settings=settings)
    container.runtime_adapter.override(providers.Object(runtime))

    with uvicorn_serving(settings, container) as address, \
            httpx.Client(base_url=f"http://localhost:{address[1]}") as client:
        sandbox_id = client.post("/sandboxes").json()["sandbox_id"]
        send_and_leave(address, raw_post(f"/sandboxes/{sandbox_id}/exec?language=python",
                                         LONG_SCRIPT),
                       started=lambda: runtime.execs_running == 1)
        eventually(lambda: runtime.execs_running == 0, "the end of the abandoned exec")
        suspended = client.post(f"/sandboxes/{sandbox_id}/suspend")  # no longer busy

        assert suspended.status_code == 200
        assert runtime.live == set()


# Ambiguous framing (RFC 9112 section 6.1) ---------------------------------------------------


@pytest.mark.parametrize("content_length", [b"12", b"100", b"0"])
def test_a_request_with_both_content_length_and_chunked_is_a_400_and_the_connection_closes(
    settings: Settings, content_length: bytes
) -> None:
    container = Container(settings=settings)
    runtime = fake_runtime_of(container)
    request = (b"POST /execute?language=python HTTP/1.1\r\nHost: localhost\r\n"
               b"Content-Length: " + content_length + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"c\r\nprint('hi')\n\r\n0\r\n\r\n")

    with uvicorn_serving(settings, container) as address, \
            socket.create_connection(address, timeout=10) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(4096):  # until the server closes the connection
            answer += chunk

        assert runtime.runs == []
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "ambiguous_framing"
