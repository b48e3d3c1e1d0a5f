"""Fixtures of the unit tests: the lifecycle service on the fake runtime, the in-memory store
and output log, and a clock the tests move by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from lifecycle_support import ControlledRuntime, ManualClock, NewService

from sandbox.adapters.memory_store import InMemoryOutputLog, InMemorySandboxStore
from sandbox.domain.lifecycle import LifecyclePolicy, SandboxService
from sandbox.domain.ports import SandboxStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def runtime() -> ControlledRuntime:
    return ControlledRuntime()


@pytest.fixture
def store() -> InMemorySandboxStore:
    return InMemorySandboxStore()


@pytest.fixture
def outputs() -> InMemoryOutputLog:
    return InMemoryOutputLog()


@pytest.fixture
async def new_service(
    runtime: ControlledRuntime,
    store: InMemorySandboxStore,
    outputs: InMemoryOutputLog,
    clock: ManualClock,
) -> AsyncIterator[NewService]:
    """Makes services over the same runtime, store and output log (a second one is the same
    server after a restart); closes them all and clears the runtime afterwards."""
    made: list[SandboxService] = []

    def make(
        policy: LifecyclePolicy | None = None, other_store: SandboxStore | None = None
    ) -> SandboxService:
        # Closing a service without its graceful suspend models a crash, which is what the
        # restart tests need; tests of the graceful stop pass a policy that asks for it.
        policy = policy or LifecyclePolicy(suspend_on_shutdown=False)
        service = SandboxService(runtime, other_store or store, outputs, policy, clock)
        made.append(service)
        return service

    yield make
    for service in made:
        await service.close()
    for sandbox_id in await runtime.leftover_ids():
        await runtime.destroy(sandbox_id)


@pytest.fixture
def service(new_service: NewService) -> SandboxService:
    return new_service()
