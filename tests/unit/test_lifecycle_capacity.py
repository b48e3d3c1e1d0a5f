"""Managed sandboxes hold their memory limit in the budget they share with ephemeral
executions, from admission until they stop running."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from lifecycle_support import LIMITS, ControlledRuntime, ManualClock, exited_script, session

from sandbox.adapters.memory_store import InMemoryOutputLog, InMemorySandboxStore
from sandbox.domain import services
from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import AtCapacity, CheckpointMismatch
from sandbox.domain.lifecycle import LifecyclePolicy, SandboxService
from sandbox.domain.metrics import CapacityLimit, NoMetrics
from sandbox.domain.model import Language, SandboxState

pytestmark = pytest.mark.anyio

# Room for one sandbox of LIMITS' memory, not two.
BUDGET_MB = LIMITS.memory_mb * 3 // 2


@pytest.fixture
def capacity() -> Capacity:
    return Capacity(max_executions=4, memory_budget_mb=BUDGET_MB, wait_s=0.05)


@pytest.fixture
async def service(
    runtime: ControlledRuntime,
    store: InMemorySandboxStore,
    outputs: InMemoryOutputLog,
    clock: ManualClock,
    capacity: Capacity,
) -> AsyncIterator[SandboxService]:
    service = SandboxService(runtime, store, outputs, LifecyclePolicy(suspend_on_shutdown=False),
                             clock, capacity=capacity)
    yield service
    await service.close()
    for sandbox_id in await runtime.leftover_ids():
        await runtime.destroy(sandbox_id)


async def test_a_running_session_holds_its_memory(
    service: SandboxService, capacity: Capacity
) -> None:
    await session(service)

    with pytest.raises(AtCapacity, match="MiB"):
        await session(service)

    assert capacity.memory_mb == LIMITS.memory_mb
    assert len(await service.list_sandboxes()) == 1


async def test_suspend_delete_and_exit_give_the_memory_back(
    service: SandboxService, capacity: Capacity
) -> None:
    suspended = await service.suspend((await session(service)).sandbox_id)
    assert capacity.memory_mb == 0

    await service.restore(suspended.sandbox_id)
    assert capacity.memory_mb == LIMITS.memory_mb

    await service.delete(suspended.sandbox_id)
    assert capacity.memory_mb == 0

    await exited_script(service, "sys.exit(0)")
    assert capacity.memory_mb == 0


async def test_a_refused_restore_gives_the_memory_back_and_stays_suspended(
    service: SandboxService, capacity: Capacity, runtime: ControlledRuntime
) -> None:
    suspended = await service.suspend((await session(service)).sandbox_id)
    runtime.version = "upgraded"

    with pytest.raises(CheckpointMismatch):
        await service.restore(suspended.sandbox_id)

    assert capacity.memory_mb == 0
    assert (await service.get(suspended.sandbox_id)).state is SandboxState.SUSPENDED


async def test_a_failed_launch_gives_the_memory_back(
    service: SandboxService, capacity: Capacity, runtime: ControlledRuntime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("the runtime broke")

    monkeypatch.setattr(runtime, "launch", broken)

    with pytest.raises(RuntimeError):
        await session(service)

    assert capacity.memory_mb == 0


async def test_ephemeral_executions_share_the_budget_with_managed_sandboxes(
    service: SandboxService, capacity: Capacity, runtime: ControlledRuntime
) -> None:
    await session(service)

    with pytest.raises(AtCapacity):
        await services.execute_script(runtime, Language.PYTHON, b'print("hi")\n', LIMITS,
                                      capacity=capacity)

    small = dataclasses.replace(LIMITS, memory_mb=BUDGET_MB - LIMITS.memory_mb)
    result = await services.execute_script(runtime, Language.PYTHON, b'print("hi")\n', small,
                                           capacity=capacity)
    assert result.stdout.text == "hi\n"
    assert capacity.memory_mb == LIMITS.memory_mb


async def test_the_running_limit_refusal_is_counted_as_such(
    runtime: ControlledRuntime,
    store: InMemorySandboxStore,
    outputs: InMemoryOutputLog,
    clock: ManualClock,
) -> None:
    rejected: list[str] = []

    class Recording(NoMetrics):
        def capacity_rejected(self, limit: CapacityLimit) -> None:
            rejected.append(limit)

    capacity = Capacity(4, 100_000, 0.05, metrics=Recording())
    service = SandboxService(runtime, store, outputs, LifecyclePolicy(
        max_running=1, suspend_on_shutdown=False), clock, capacity=capacity)
    try:
        await session(service)
        with pytest.raises(AtCapacity) as refused:
            await session(service)
    finally:
        await service.close()

    assert refused.value.retry_after_s == 5
    assert rejected == ["running_sandboxes"]
    assert capacity.memory_mb == LIMITS.memory_mb
