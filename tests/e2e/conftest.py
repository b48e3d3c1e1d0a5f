from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import structlog
from starlette.testclient import TestClient
from structlog.typing import EventDict

from e2e.support import Service, StartService, fake_runtime_of, fake_settings, local_client
from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.containers import Container
from sandbox.entrypoints.app import create_app
from sandbox.settings import Settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return fake_settings(tmp_path)


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[StartService]:
    """Starts the app (lifespan included) on the fake runtime, with settings overridden."""
    with ExitStack() as running:

        def start(**overrides: Any) -> Service:
            settings = fake_settings(tmp_path, **overrides)
            container = Container(settings=settings)
            client = running.enter_context(local_client(create_app(settings, container)))
            return Service(client, fake_runtime_of(container))

        yield start


@pytest.fixture
def service(start_service: StartService) -> Service:
    return start_service()


@pytest.fixture
def client(service: Service) -> TestClient:
    return service.client


@pytest.fixture
def runtime(service: Service) -> FakeSandboxRuntime:
    return service.runtime


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    """Log entries with the request's bound context.

    `structlog.testing.capture_logs` drops every processor, `merge_contextvars` included, so
    request ids would not show; this keeps that one processor in front of the capture.
    """
    previous = structlog.get_config()
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    yield capture.entries
    structlog.configure(**previous)
