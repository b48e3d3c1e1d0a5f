"""Starting the app on the fake runtime: through TestClient, as a bare ASGI app, or served by
uvicorn in a thread."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from dependency_injector import providers
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Scope

from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.containers import Container
from sandbox.entrypoints.app import create_app, routes
from sandbox.entrypoints.server import server_config
from sandbox.settings import Settings

# A loopback name, as a local client would use: the server refuses Host headers that name
# anything else (DNS rebinding), TestClient's own "testserver" included.
LOCAL_BASE_URL = "http://localhost"
SOME_ID = "0" * 24
SOME_CONTEXT_ID = "0" * 16


def local_client(app: ASGIApp) -> TestClient:
    return TestClient(app, base_url=LOCAL_BASE_URL)


def route_calls() -> list[tuple[str, str]]:
    """Every (method, path) the app routes, with made-up path parameters."""
    found = []
    for route in routes:
        assert isinstance(route, Route)
        path = route.path.replace("{sandbox_id}", SOME_ID).replace("{path:path}", "a.txt")
        path = path.replace("{context_id}", SOME_CONTEXT_ID)
        found += [(method, path) for method in sorted(route.methods or ())]
    return found


@dataclass
class Service:
    client: TestClient
    runtime: FakeSandboxRuntime


StartService = Callable[..., Service]


def fake_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Without warm pools unless asked (`pool=...`): most tests count the sandboxes a
    request makes, and a pool makes its own."""
    return Settings(runtime="fake", state_dir=tmp_path / "state", **{"pool": "", **overrides})


def fake_runtime_of(container: Container) -> FakeSandboxRuntime:
    runtime = container.runtime_adapter()
    assert isinstance(runtime, FakeSandboxRuntime)
    return runtime


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Starlette, FakeSandboxRuntime]]:
    """The app with its lifespan running, for tests that play the ASGI server themselves."""
    container = Container(settings=settings)
    app = create_app(settings, container)
    async with app.router.lifespan_context(app):
        yield app, fake_runtime_of(container)


@contextmanager
def uvicorn_serving(
    settings: Settings, container: Container | None = None
) -> Iterator[tuple[str, int]]:
    """The app served by uvicorn in a thread, as `python -m sandbox` serves it, for clients
    that TestClient cannot play (raw bytes on a socket)."""
    listener = socket.create_server(("127.0.0.1", 0))
    config = server_config(create_app(settings, container), settings)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield listener.getsockname()
    finally:
        server.should_exit = True
        thread.join(5)
        listener.close()


def post_scope(path: str, query: bytes) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
    }


def app_on(settings: Settings, runtime: FakeSandboxRuntime) -> TestClient:
    """A client of a new app on these settings that uses this runtime instance (a restart
    of the server while the sandboxes' runtime lives on)."""
    container = Container(settings=settings)
    container.runtime_adapter.override(providers.Object(runtime))
    return local_client(create_app(settings, container))


def create_session(client: TestClient, **body: Any) -> str:
    response = client.post("/sandboxes", json=body)
    assert response.status_code == 201, response.text
    sandbox_id: str = response.json()["sandbox_id"]
    return sandbox_id


def wait_for_state(
    client: TestClient, sandbox_id: str, state: str, timeout_s: float = 3.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        record: dict[str, Any] = client.get(f"/sandboxes/{sandbox_id}").json()
        if record["state"] == state:
            return record
        assert time.monotonic() < deadline, f"still {record['state']}, not {state}"
        time.sleep(0.02)


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]
