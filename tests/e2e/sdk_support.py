"""The app served by uvicorn on a loopback port (fake runtime), for the SDK and sbx to call as
they would any server; and whether the server has the routes other branches are adding."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.support import fake_runtime_of, fake_settings, uvicorn_serving
from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.containers import Container
from sandbox.entrypoints.openapi import DOCUMENT
from sandbox_client import ConnectionConfig


@dataclass
class Served:
    url: str
    runtime: FakeSandboxRuntime

    def config(self, **fields: Any) -> ConnectionConfig:
        return ConnectionConfig(url=self.url, **fields)


@contextmanager
def served(tmp_path: Path, **overrides: Any) -> Iterator[Served]:
    settings = fake_settings(tmp_path, **overrides)
    container = Container(settings=settings)
    with uvicorn_serving(settings, container) as (host, port):
        yield Served(f"http://{host}:{port}", fake_runtime_of(container))


def _routed(path: str) -> bool:
    return path in DOCUMENT["paths"]


# Pending server work (templates and fork), built on another branch: the SDK's side is
# unit-tested against the API as specified; these run once the routes exist.
needs_templates = pytest.mark.skipif(
    not (_routed("/sandboxes/{sandbox_id}/snapshot") and _routed("/sandboxes/{sandbox_id}/fork")),
    reason="pending: the server's snapshot, templates and fork (another branch) are not "
           "routed here yet; the SDK's side is unit-tested against the specified API",
)
