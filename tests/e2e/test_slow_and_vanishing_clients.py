"""Clients that TestClient cannot play: one that leaves mid-stream, one that sends too slowly,
one whose request is framed two ways."""

from __future__ import annotations

import dataclasses
import json
import socket

import anyio
import pytest
from starlette.types import Message
from structlog.typing import EventDict

from e2e.support import fake_runtime_of, post_scope, running, uvicorn_serving
from sandbox.containers import Container
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
