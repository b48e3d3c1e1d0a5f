from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from dependency_injector import providers

from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.containers import Container
from sandbox.settings import Settings

pytestmark = pytest.mark.anyio


class RuntimeWithLifecycle(FakeSandboxRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def close(self) -> None:
        self.calls.append("close")


async def awaited(pending: Awaitable[Any] | None) -> None:
    # An awaitable only when some resource is asynchronous, as the runtime's is.
    assert pending is not None
    await pending


def test_the_fake_runtime_is_chosen_by_the_runtime_setting(tmp_path: Path) -> None:
    container = Container(settings=Settings(runtime="fake", state_dir=tmp_path))

    assert isinstance(container.runtime_adapter(), FakeSandboxRuntime)


def test_the_limit_policy_follows_the_settings(tmp_path: Path) -> None:
    settings = Settings(runtime="fake", state_dir=tmp_path, max_timeout_s=60, max_memory_mb=1024)

    policy = Container(settings=settings).limit_policy()

    assert policy.defaults == settings.default_limits()
    assert (policy.max_timeout_s, policy.max_memory_mb) == (60, 1024)


async def test_the_runtime_is_started_with_the_resources_and_closed_with_them(
    tmp_path: Path,
) -> None:
    container = Container(settings=Settings(runtime="fake", state_dir=tmp_path))
    runtime = RuntimeWithLifecycle()
    container.runtime_adapter.override(providers.Object(runtime))

    await awaited(container.init_resources())
    started = list(runtime.calls)
    await awaited(container.shutdown_resources())

    assert started == ["start"]
    assert runtime.calls == ["start", "close"]
