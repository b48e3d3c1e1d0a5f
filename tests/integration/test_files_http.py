"""A real server (`python -m sandbox` on real gVisor) moving the largest file it takes by
default in and out of a session, streamed both ways: the bytes round-trip and the server's
memory does not grow by anything like the file."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.server import destroy_leftovers, ok, serving
from sandbox.settings import Settings

pytestmark = pytest.mark.runsc

SIZE = 64 * 1024 * 1024
PIECE = 64 * 1024


@pytest.fixture(autouse=True)
def cleaned_up(settings: Settings) -> Iterator[None]:
    yield
    destroy_leftovers(settings)


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_64_mib_file_streams_in_and_out_without_the_server_holding_it(
    settings: Settings, tmp_path: Path
) -> None:
    sent, received = hashlib.sha256(), hashlib.sha256()

    def body() -> Iterator[bytes]:
        random_bytes = random.Random(5)
        for _ in range(SIZE // PIECE):
            piece = random_bytes.randbytes(PIECE)
            sent.update(piece)
            yield piece

    with serving(settings, tmp_path / "server.log") as server:
        client = server.client
        sandbox_id = ok(client.post("/sandboxes", json={"memory_mb": 1024}), 201)["sandbox_id"]
        before = peak_rss_bytes(server.process.pid)
        uploaded = ok(client.put(f"/sandboxes/{sandbox_id}/files/big.bin", content=body()), 201)
        with client.stream("GET", f"/sandboxes/{sandbox_id}/files/big.bin") as response:
            length = int(response.headers["Content-Length"])
            for chunk in response.iter_bytes():
                received.update(chunk)
        growth = peak_rss_bytes(server.process.pid) - before
        ok(client.delete(f"/sandboxes/{sandbox_id}"))

    assert uploaded == {"path": "/workspace/big.bin", "size": SIZE}
    assert (response.status_code, length) == (200, SIZE)
    assert received.hexdigest() == sent.hexdigest()
    # Held whole, the file alone would be 64 MiB (it was twice that, copies included).
    assert growth < SIZE // 4, f"the server grew by {growth} bytes"


def test_an_upload_past_the_limit_is_a_413_that_leaves_the_old_file_and_nothing_else(
    settings: Settings, tmp_path: Path
) -> None:
    limit = 4 * PIECE

    def body() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(8):
            yield b"n" * PIECE

    with serving(settings, tmp_path / "server.log",
                 SANDBOX_MAX_FILE_BYTES=str(limit)) as server:
        client = server.client
        sandbox_id = ok(client.post("/sandboxes"), 201)["sandbox_id"]
        files = f"/sandboxes/{sandbox_id}/files"
        ok(client.put(f"{files}/box/kept.txt", content=b"old"), 201)
        refused = client.put(f"{files}/box/kept.txt", content=body())
        kept = client.get(f"{files}/box/kept.txt").content
        listed = ok(client.get(f"{files}?path=box"))["entries"]
        ok(client.delete(f"/sandboxes/{sandbox_id}"))

    assert refused.status_code == 413
    assert kept == b"old"
    assert [(entry["name"], entry["size"]) for entry in listed] == [("kept.txt", 3)]
