from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import httpx
import pytest
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message
from structlog.typing import EventDict

from e2e.support import LOCAL_BASE_URL, StartService, create_session, post_scope, running
from sandbox.domain.errors import InvalidRequest
from sandbox.domain.ports import FILE_CHUNK_BYTES, OpenedFile
from sandbox.settings import Settings

BINARY = bytes(range(256)) * 4


def asgi_client(app: ASGIApp) -> httpx.AsyncClient:
    """Requests in the test's own event loop, with bodies streamed both ways."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL_BASE_URL)


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), FILE_CHUNK_BYTES):
        yield data[start:start + FILE_CHUNK_BYTES]


async def whole(opening: AbstractAsyncContextManager[OpenedFile]) -> bytes:
    async with opening as opened:
        return b"".join([chunk async for chunk in opened.chunks])


@pytest.fixture
def sandbox_id(client: TestClient) -> str:
    return create_session(client)


def test_a_file_round_trips_byte_for_byte(client: TestClient, sandbox_id: str) -> None:
    put = client.put(f"/sandboxes/{sandbox_id}/files/data/blob.bin", content=BINARY)
    get = client.get(f"/sandboxes/{sandbox_id}/files/data/blob.bin")

    assert put.status_code == 201
    assert put.json() == {"path": "/workspace/data/blob.bin", "size": len(BINARY)}
    assert get.status_code == 200
    assert get.headers["Content-Type"] == "application/octet-stream"
    assert get.content == BINARY


def test_relative_and_absolute_paths_name_the_same_file(
    client: TestClient, sandbox_id: str
) -> None:
    client.put(f"/sandboxes/{sandbox_id}/files/notes.txt", content=b"one")

    absolute = client.get(f"/sandboxes/{sandbox_id}/files//workspace/notes.txt")
    dotted = client.get(f"/sandboxes/{sandbox_id}/files/sub/..%2Fnotes.txt")

    assert absolute.content == dotted.content == b"one"


def test_an_empty_file_can_be_written(client: TestClient, sandbox_id: str) -> None:
    put = client.put(f"/sandboxes/{sandbox_id}/files/empty", content=b"")

    assert put.status_code == 201
    assert client.get(f"/sandboxes/{sandbox_id}/files/empty").content == b""


def test_listing_a_folder_names_its_entries(client: TestClient, sandbox_id: str) -> None:
    client.put(f"/sandboxes/{sandbox_id}/files/a.txt", content=b"aaa")
    client.put(f"/sandboxes/{sandbox_id}/files/b.bin", content=BINARY)
    client.put(f"/sandboxes/{sandbox_id}/files//tmp/elsewhere", content=b"x")

    default = client.get(f"/sandboxes/{sandbox_id}/files")
    tmp = client.get(f"/sandboxes/{sandbox_id}/files?path=/tmp")

    assert default.status_code == 200
    assert default.json()["path"] == "/workspace"
    assert [(entry["name"], entry["kind"], entry["size"]) for entry in default.json()["entries"]
            ] == [("a.txt", "file", 3), ("b.bin", "file", len(BINARY))]
    assert set(default.json()["entries"][0]) == {"name", "kind", "size", "modified_at"}
    assert [entry["name"] for entry in tmp.json()["entries"]] == ["elsewhere"]


def test_a_missing_file_is_a_404_file_not_found(client: TestClient, sandbox_id: str) -> None:
    response = client.get(f"/sandboxes/{sandbox_id}/files/nothing-here")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "file_not_found"


@pytest.mark.parametrize("path", ["", "a%00b", "x" * 4097])
def test_a_bad_path_is_a_400(client: TestClient, sandbox_id: str, path: str) -> None:
    put = client.put(f"/sandboxes/{sandbox_id}/files/{path}", content=b"x")
    get = client.get(f"/sandboxes/{sandbox_id}/files/{path}")

    assert (put.status_code, get.status_code) == (400, 400)


@pytest.mark.parametrize("query", ["path=", "path=a%00b", "recursive=true"])
def test_a_bad_listing_query_is_a_400(client: TestClient, sandbox_id: str, query: str) -> None:
    response = client.get(f"/sandboxes/{sandbox_id}/files?{query}")

    assert response.status_code == 400


def test_an_upload_over_the_file_limit_is_a_413(start_service: StartService) -> None:
    client = start_service(max_file_bytes=100).client
    sandbox_id = create_session(client)

    response = client.put(f"/sandboxes/{sandbox_id}/files/big", content=b"x" * 101)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_files_of_an_unknown_sandbox_are_a_404(client: TestClient) -> None:
    unknown = "c" * 24

    responses = [
        client.put(f"/sandboxes/{unknown}/files/a", content=b"x"),
        client.get(f"/sandboxes/{unknown}/files/a"),
        client.get(f"/sandboxes/{unknown}/files"),
    ]

    assert [response.status_code for response in responses] == [404, 404, 404]
    assert {response.json()["error"]["code"] for response in responses} == {"not_found"}


def test_files_of_a_suspended_sandbox_are_a_409(client: TestClient, sandbox_id: str) -> None:
    client.post(f"/sandboxes/{sandbox_id}/suspend")

    responses = [
        client.put(f"/sandboxes/{sandbox_id}/files/a", content=b"x"),
        client.get(f"/sandboxes/{sandbox_id}/files/a"),
        client.get(f"/sandboxes/{sandbox_id}/files"),
    ]

    assert [response.status_code for response in responses] == [409, 409, 409]


def test_files_take_put_and_get_only(client: TestClient, sandbox_id: str) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/files/a", content=b"x")

    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "PUT"}


def test_a_chunked_upload_over_the_limit_leaves_the_old_file_as_it_was(
    start_service: StartService,
) -> None:
    client = start_service(max_file_bytes=100).client
    sandbox_id = create_session(client)
    client.put(f"/sandboxes/{sandbox_id}/files/kept.txt", content=b"old")

    def body() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield from [b"n" * 60, b"n" * 60]

    refused = client.put(f"/sandboxes/{sandbox_id}/files/kept.txt", content=body())
    refused_new = client.put(f"/sandboxes/{sandbox_id}/files/new.txt", content=body())

    assert (refused.status_code, refused_new.status_code) == (413, 413)
    assert client.get(f"/sandboxes/{sandbox_id}/files/kept.txt").content == b"old"
    assert client.get(f"/sandboxes/{sandbox_id}/files/new.txt").status_code == 404


def test_a_head_of_a_file_gives_its_size_without_its_bytes(
    client: TestClient, sandbox_id: str
) -> None:
    client.put(f"/sandboxes/{sandbox_id}/files/sized.bin", content=BINARY)

    response = client.head(f"/sandboxes/{sandbox_id}/files/sized.bin")

    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(BINARY))
    assert response.content == b""


# Streaming: a file passes through the server a chunk at a time ---------------------------

CHUNKS = 256  # 16 MiB in all, far more than the few chunks a transfer may hold


def most_ahead(events: list[str], ahead: str, behind: str) -> int:
    """How many chunks `ahead` was ever in front of `behind`: what was held in between."""
    lead = most = 0
    for event in events:
        lead += 1 if event == ahead else -1 if event == behind else 0
        most = max(most, lead)
    return most


@pytest.mark.anyio
async def test_an_upload_reaches_the_sandbox_as_it_arrives_never_held_whole(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    sizes: list[int] = []
    piece = bytes(range(256)) * (FILE_CHUNK_BYTES // 256)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(CHUNKS):
            events.append("sent")
            yield piece

    async with running(settings) as (app, runtime), asgi_client(app) as client:
        sandbox_id = (await client.post("/sandboxes")).json()["sandbox_id"]
        write_file = runtime.write_file

        async def recording(sandbox_id: str, path: str, chunks: AsyncIterable[bytes]) -> int:
            async def received() -> AsyncIterator[bytes]:
                async for chunk in chunks:
                    events.append("received")
                    sizes.append(len(chunk))
                    yield chunk
            return await write_file(sandbox_id, path, received())

        monkeypatch.setattr(runtime, "write_file", recording)
        response = await client.put(f"/sandboxes/{sandbox_id}/files/big.bin", content=body())
        stored = await whole(runtime.read_file(sandbox_id, "/workspace/big.bin", 1 << 30))

    assert response.status_code == 201
    assert response.json()["size"] == CHUNKS * len(piece) == len(stored)
    assert stored == piece * CHUNKS
    assert most_ahead(events, "sent", "received") <= 2
    assert max(sizes) <= len(piece)


@pytest.mark.anyio
async def test_a_download_leaves_the_sandbox_as_it_is_sent_never_held_whole(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    bodies: list[bytes] = []
    data = random.Random(3).randbytes(CHUNKS * FILE_CHUNK_BYTES + 5)

    async with running(settings) as (app, runtime), asgi_client(app) as client:
        sandbox_id = (await client.post("/sandboxes")).json()["sandbox_id"]
        await runtime.write_file(sandbox_id, "/workspace/big.bin", chunks(data))
        read_file = runtime.read_file

        @asynccontextmanager
        async def recording(
            sandbox_id: str, path: str, limit_bytes: int
        ) -> AsyncIterator[OpenedFile]:
            async with read_file(sandbox_id, path, limit_bytes) as opened:
                async def produced() -> AsyncIterator[bytes]:
                    async for chunk in opened.chunks:
                        events.append("produced")
                        yield chunk
                yield OpenedFile(opened.size, produced())

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                bodies.append(b"")
                assert (b"content-length", str(len(data)).encode()) in message["headers"]
            elif message.get("body"):
                events.append("sent")
                bodies.append(message["body"])

        async def receive() -> Message:
            await anyio.sleep_forever()  # the client stays until the answer ends
            raise AssertionError

        monkeypatch.setattr(runtime, "read_file", recording)
        scope = {**post_scope(f"/sandboxes/{sandbox_id}/files/big.bin", b""), "method": "GET"}
        await app(scope, receive, send)

    assert b"".join(bodies) == data
    assert most_ahead(events, "produced", "sent") <= 2
    assert max(len(body) for body in bodies) <= FILE_CHUNK_BYTES


@pytest.mark.anyio
async def test_a_download_over_the_limit_is_refused_before_it_starts(settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_file_bytes=100)

    async with running(settings) as (app, runtime), asgi_client(app) as client:
        sandbox_id = (await client.post("/sandboxes")).json()["sandbox_id"]
        await runtime.write_file(sandbox_id, "/workspace/big.bin", chunks(b"x" * 101))
        response = await client.get(f"/sandboxes/{sandbox_id}/files/big.bin")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.anyio
async def test_a_client_that_leaves_mid_download_closes_the_file_and_frees_the_sandbox(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[bool] = []
    first_body_sent = anyio.Event()

    async with running(settings) as (app, runtime), asgi_client(app) as client:
        sandbox_id = (await client.post("/sandboxes")).json()["sandbox_id"]
        await runtime.write_file(sandbox_id, "/workspace/big.bin",
                                 chunks(b"b" * (CHUNKS * FILE_CHUNK_BYTES)))
        read_file = runtime.read_file

        @asynccontextmanager
        async def recording(
            sandbox_id: str, path: str, limit_bytes: int
        ) -> AsyncIterator[OpenedFile]:
            try:
                async with read_file(sandbox_id, path, limit_bytes) as opened:
                    yield opened
            finally:
                closed.append(True)

        async def send(message: Message) -> None:
            if message.get("body"):
                first_body_sent.set()

        async def receive() -> Message:
            await first_body_sent.wait()
            return {"type": "http.disconnect"}

        monkeypatch.setattr(runtime, "read_file", recording)
        scope = {**post_scope(f"/sandboxes/{sandbox_id}/files/big.bin", b""), "method": "GET"}
        with anyio.fail_after(10):
            await app(scope, receive, send)
        suspended = await client.post(f"/sandboxes/{sandbox_id}/suspend")

    assert closed == [True]
    assert suspended.status_code == 200  # no longer busy with the download


@pytest.mark.anyio
async def test_a_download_that_fails_half_way_is_cut_short_not_completed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, logs: list[EventDict]
) -> None:
    sent: list[Message] = []

    @asynccontextmanager
    async def failing(sandbox_id: str, path: str, limit_bytes: int) -> AsyncIterator[OpenedFile]:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first"
            raise InvalidRequest("the helper in the sandbox went away")
        yield OpenedFile(100, chunks())

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError

    async with running(settings) as (app, runtime), asgi_client(app) as client:
        sandbox_id = (await client.post("/sandboxes")).json()["sandbox_id"]
        monkeypatch.setattr(runtime, "read_file", failing)
        scope = {**post_scope(f"/sandboxes/{sandbox_id}/files/f", b""), "method": "GET"}
        with anyio.fail_after(10):
            await app(scope, receive, send)

    assert sent[0]["status"] == 200
    assert [message.get("body") for message in sent[1:]] == [b"first"]
    assert all(message.get("more_body") for message in sent[1:])  # never completed
    cut = next(entry for entry in logs if entry["event"] == "file.download_cut")
    assert cut["code"] == "invalid_request"
