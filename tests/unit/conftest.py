"""Fixtures of the unit tests: the use cases' `Sandboxes` on the fake runtime, the in-memory
store, leases, handoff requests, signals and output log, checkpoint images in a temporary
folder, and a clock the tests move by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lifecycle_support import ControlledRuntime, ManualClock, NewSandboxes
from lifecycle_support import policy as crash_policy

from sandbox.adapters.folder_image_store import FolderImageStore
from sandbox.adapters.memory_leases import InMemoryHandoffRequests, InMemoryLeaseStore
from sandbox.adapters.memory_signals import InMemorySignals
from sandbox.adapters.memory_store import InMemoryOutputLog, InMemorySandboxStore
from sandbox.domain.lifecycle.sandboxes import LifecyclePolicy, Sandboxes, SharedState
from sandbox.domain.lifecycle.shutdown import shut_down
from sandbox.domain.ports import OutputLog, SandboxRuntime, SandboxStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def runtime(tmp_path: Path) -> ControlledRuntime:
    return ControlledRuntime(tmp_path / "host-images")


@pytest.fixture
def leases() -> InMemoryLeaseStore:
    return InMemoryLeaseStore()


@pytest.fixture
def store(leases: InMemoryLeaseStore) -> InMemorySandboxStore:
    return InMemorySandboxStore(leases)


@pytest.fixture
async def images(tmp_path: Path) -> FolderImageStore:
    store = FolderImageStore(tmp_path / "checkpoints", tmp_path / "image-copies")
    await store.start()
    return store


@pytest.fixture
def shared(
    images: FolderImageStore, leases: InMemoryLeaseStore
) -> SharedState:
    """What instances share; `dataclasses.replace(shared, instance_id=...)` is another."""
    return SharedState(images=images, leases=leases, handoffs=InMemoryHandoffRequests(),
                       signals=InMemorySignals(), instance_id="unit-a")


@pytest.fixture
def outputs() -> InMemoryOutputLog:
    return InMemoryOutputLog()


@pytest.fixture
async def new_sandboxes(
    runtime: ControlledRuntime,
    store: InMemorySandboxStore,
    outputs: InMemoryOutputLog,
    clock: ManualClock,
    shared: SharedState,
) -> AsyncIterator[NewSandboxes]:
    """Makes `Sandboxes` over the same runtime, store, output log and shared state (a second
    one is the same server after a restart; given another runtime and instance id, another
    instance); shuts them all down and clears the runtimes afterwards. Options (capacity,
    metrics, installer, package_policy) go to `Sandboxes`."""
    made: list[Sandboxes] = []

    def make(
        policy: LifecyclePolicy | None = None,
        other_store: SandboxStore | None = None,
        other_outputs: OutputLog | None = None,
        other_runtime: SandboxRuntime | None = None,
        other_shared: SharedState | None = None,
        **options: Any,
    ) -> Sandboxes:
        sandboxes = Sandboxes(other_runtime or runtime, other_store or store,
                              other_outputs or outputs, policy or crash_policy(),
                              other_shared or shared, clock=clock, **options)
        made.append(sandboxes)
        return sandboxes

    yield make
    for sandboxes in made:
        await shut_down(sandboxes)
    for used in {id(sandboxes.runtime): sandboxes.runtime for sandboxes in made}.values():
        for sandbox_id in await used.leftover_ids():
            await used.destroy(sandbox_id)


@pytest.fixture
def sandboxes(new_sandboxes: NewSandboxes) -> Sandboxes:
    return new_sandboxes()
