"""A real server (`python -m sandbox` on real gVisor) whose client hangs up before its answer:
the sandbox it asked for ends at once and nothing of it is left, streamed or not."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.server import destroy_leftovers, eventually, serving
from integration.support import leftovers
from sandbox.settings import Settings

pytestmark = pytest.mark.runsc

# Far longer than the test may take: only the client's leaving can end it in time.
SLEEPER = b"import time\nprint('started', flush=True)\ntime.sleep(600)\n"


@pytest.fixture(autouse=True)
def cleaned_up(settings: Settings) -> Iterator[None]:
    yield
    destroy_leftovers(settings)


def containers(settings: Settings) -> list[str]:
    return [found for found in leftovers(settings) if found.startswith("container ")]


@pytest.mark.parametrize("query", ["", "&stream=true"])
def test_a_client_that_hangs_up_leaves_no_container_behind(
    settings: Settings, tmp_path: Path, query: str
) -> None:
    log = tmp_path / "server.log"
    request = (f"POST /execute?language=python&timeout=300{query} HTTP/1.1\r\n"
               f"Host: localhost\r\nContent-Length: {len(SLEEPER)}\r\n\r\n").encode() + SLEEPER

    with serving(settings, log) as server:
        address = (server.client.base_url.host, server.client.base_url.port or 80)
        with socket.create_connection(address, timeout=30) as client:
            client.sendall(request)
            eventually(lambda: containers(settings), what="the start of the sandbox")
        # The connection is closed: well before the script's 600 s, nothing may be left.
        eventually(lambda: leftovers(settings) == [], within_s=60,
                   what="the end of the abandoned sandbox")

        assert server.process.poll() is None
    text = log.read_text()
    assert ("http.client_left" if not query else "execution.cancelled") in text
