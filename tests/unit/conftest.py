"""Fixtures of the unit tests: the use cases' `Sandboxes` on the fake runtime, the in-memory
store and output log, and a clock the tests move by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from lifecycle_support import ControlledRuntime, ManualClock, NewSandboxes
from lifecycle_support import policy as crash_policy

from sandbox.adapters.memory_store import InMemoryOutputLog, InMemorySandboxStore
from sandbox.domain.lifecycle.sandboxes import LifecyclePolicy, Sandboxes
from sandbox.domain.lifecycle.shutdown import shut_down
from sandbox.domain.ports import OutputLog, SandboxStore


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
async def new_sandboxes(
    runtime: ControlledRuntime,
    store: InMemorySandboxStore,
    outputs: InMemoryOutputLog,
    clock: ManualClock,
) -> AsyncIterator[NewSandboxes]:
    """Makes `Sandboxes` over the same runtime, store and output log (a second one is the same
    server after a restart); shuts them all down and clears the runtime afterwards. Options
    (capacity, metrics, installer, package_policy) go to `Sandboxes`."""
    made: list[Sandboxes] = []

    def make(
        policy: LifecyclePolicy | None = None,
        other_store: SandboxStore | None = None,
        other_outputs: OutputLog | None = None,
        **options: Any,
    ) -> Sandboxes:
        sandboxes = Sandboxes(runtime, other_store or store, other_outputs or outputs,
                              policy or crash_policy(), clock=clock, **options)
        made.append(sandboxes)
        return sandboxes

    yield make
    for sandboxes in made:
        await shut_down(sandboxes)
    for sandbox_id in await runtime.leftover_ids():
        await runtime.destroy(sandbox_id)


@pytest.fixture
def sandboxes(new_sandboxes: NewSandboxes) -> Sandboxes:
    return new_sandboxes()
