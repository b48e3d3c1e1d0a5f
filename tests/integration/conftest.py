"""The runsc tier: real gVisor. Skipped where it cannot run, unless CI=true or
SANDBOX_REQUIRE_RUNSC=1, where that is a failure instead."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from integration.support import (
    leftovers,
    managed_sandboxes,
    require_runsc,
    runtime_settings,
    started_runtime,
)
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Limits
from sandbox.settings import Settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    require_runsc()
    return runtime_settings(tmp_path / "state")


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[RunscSandboxRuntime]:
    async with started_runtime(settings) as started:
        yield started


@pytest.fixture
async def sandboxes(
    runtime: RunscSandboxRuntime, settings: Settings
) -> AsyncIterator[Sandboxes]:
    """The lifecycle service on the test's runtime; the test deletes what it made."""
    async with managed_sandboxes(runtime, settings) as managed:
        yield managed


@pytest.fixture(autouse=True)
def nothing_left_behind(runtime: RunscSandboxRuntime, settings: Settings) -> Iterator[None]:
    """After each test (before the runtime closes, which would hide a leak): no container,
    bundle, checkpoint, record, output, cgroup or process of this runtime is left."""
    yield
    assert leftovers(settings) == []


@pytest.fixture
def limits(settings: Settings) -> Limits:
    return dataclasses.replace(settings.default_limits(), timeout_s=20)
