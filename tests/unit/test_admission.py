"""Admission of managed sandboxes: a cap on how many run at once, and their memory limits held
in the budget they share with ephemeral executions, from admission until they stop running."""

from __future__ import annotations

import asyncio

import pytest
from lifecycle_support import (
    LIMITS,
    ControlledRuntime,
    NewSandboxes,
    exited_script,
    policy,
    session,
    suspended_session,
)

from sandbox.adapters.memory_leases import InMemoryLeaseStore
from sandbox.adapters.memory_store import InMemorySandboxStore
from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import AtCapacity, CheckpointMismatch
from sandbox.domain.lifecycle.creation import run_detached
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.reading import list_sandboxes
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.metrics import CapacityLimit, NoMetrics
from sandbox.domain.model import Language, Sandbox, SandboxState

pytestmark = pytest.mark.anyio


# Running sandboxes ------------------------------------------------------------------------


async def test_a_create_beyond_the_running_limit_is_refused(new_sandboxes: NewSandboxes) -> None:
    sandboxes = new_sandboxes(policy(max_running=1))
    await session(sandboxes)

    with pytest.raises(AtCapacity) as refused:
        await session(sandboxes)
    with pytest.raises(AtCapacity):
        await run_detached(sandboxes, Language.BASH, b"echo hi\n", LIMITS)

    assert refused.value.retry_after_s > 0
    assert len(await list_sandboxes(sandboxes)) == 1


async def test_suspended_sandboxes_do_not_count_towards_the_running_limit(
    new_sandboxes: NewSandboxes,
) -> None:
    sandboxes = new_sandboxes(policy(max_running=1))
    await suspended_session(sandboxes)

    created = await session(sandboxes)

    assert created.state is SandboxState.RUNNING


async def test_a_restore_beyond_the_running_limit_is_refused_and_stays_suspended(
    new_sandboxes: NewSandboxes,
) -> None:
    sandboxes = new_sandboxes(policy(max_running=1))
    suspended = await suspended_session(sandboxes)
    await session(sandboxes)

    with pytest.raises(AtCapacity):
        await restore_sandbox(sandboxes, suspended.sandbox_id)

    assert (await sandboxes.get(suspended.sandbox_id)).state is SandboxState.SUSPENDED


class StoreOnDisk(InMemorySandboxStore):
    """Yields to other tasks on every call, as a store that waits for its disk does."""

    async def add(self, sandbox: Sandbox) -> None:
        await asyncio.sleep(0)
        await super().add(sandbox)

    async def list(self, state: SandboxState | None = None) -> list[Sandbox]:
        await asyncio.sleep(0)
        return await super().list(state)


async def test_concurrent_creates_never_run_more_sandboxes_than_the_limit(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime, leases: InMemoryLeaseStore
) -> None:
    sandboxes = new_sandboxes(policy(max_running=2), StoreOnDisk(leases))

    attempts = await asyncio.gather(*(session(sandboxes) for _ in range(4)),
                                    return_exceptions=True)

    created = [attempt for attempt in attempts if isinstance(attempt, Sandbox)]
    refused = [attempt for attempt in attempts if isinstance(attempt, AtCapacity)]
    assert (len(created), len(refused)) == (2, 2)
    assert len(runtime.live) == 2


async def test_a_script_ends_and_so_makes_room_under_the_running_limit(
    new_sandboxes: NewSandboxes,
) -> None:
    sandboxes = new_sandboxes(policy(max_running=1))
    await exited_script(sandboxes, "sys.exit(0)")

    created = await session(sandboxes)

    assert created.state is SandboxState.RUNNING


# Memory ----------------------------------------------------------------------------------

# Room for one sandbox of LIMITS' memory, not two.
BUDGET_MB = LIMITS.memory_mb * 3 // 2


@pytest.fixture
def capacity() -> Capacity:
    return Capacity(max_executions=4, memory_budget_mb=BUDGET_MB, wait_s=0.05)


@pytest.fixture
def sandboxes(new_sandboxes: NewSandboxes, capacity: Capacity) -> Sandboxes:
    return new_sandboxes(capacity=capacity)


async def test_a_running_session_holds_its_memory(
    sandboxes: Sandboxes, capacity: Capacity
) -> None:
    await session(sandboxes)

    with pytest.raises(AtCapacity, match="MiB"):
        await session(sandboxes)

    assert capacity.memory_mb == LIMITS.memory_mb
    assert len(await list_sandboxes(sandboxes)) == 1


async def test_suspend_delete_and_exit_give_the_memory_back(
    sandboxes: Sandboxes, capacity: Capacity
) -> None:
    suspended = await suspend_sandbox(sandboxes, (await session(sandboxes)).sandbox_id)
    assert capacity.memory_mb == 0

    await restore_sandbox(sandboxes, suspended.sandbox_id)
    assert capacity.memory_mb == LIMITS.memory_mb

    await delete_sandbox(sandboxes, suspended.sandbox_id)
    assert capacity.memory_mb == 0

    await exited_script(sandboxes, "sys.exit(0)")
    assert capacity.memory_mb == 0


async def test_a_refused_restore_gives_the_memory_back_and_stays_suspended(
    sandboxes: Sandboxes, capacity: Capacity, runtime: ControlledRuntime
) -> None:
    suspended = await suspend_sandbox(sandboxes, (await session(sandboxes)).sandbox_id)
    runtime.version = "upgraded"

    with pytest.raises(CheckpointMismatch):
        await restore_sandbox(sandboxes, suspended.sandbox_id)

    assert capacity.memory_mb == 0
    assert (await sandboxes.get(suspended.sandbox_id)).state is SandboxState.SUSPENDED


async def test_a_failed_launch_gives_the_memory_back(
    sandboxes: Sandboxes, capacity: Capacity, runtime: ControlledRuntime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("the runtime broke")

    monkeypatch.setattr(runtime, "launch", broken)

    with pytest.raises(RuntimeError):
        await session(sandboxes)

    assert capacity.memory_mb == 0


async def test_the_running_limit_refusal_is_counted_as_such(
    new_sandboxes: NewSandboxes,
) -> None:
    rejected: list[str] = []

    class Recording(NoMetrics):
        def capacity_rejected(self, limit: CapacityLimit) -> None:
            rejected.append(limit)

    capacity = Capacity(4, 100_000, 0.05, metrics=Recording())
    sandboxes = new_sandboxes(policy(max_running=1), capacity=capacity)
    await session(sandboxes)

    with pytest.raises(AtCapacity) as refused:
        await session(sandboxes)

    assert refused.value.retry_after_s == 5
    assert rejected == ["running_sandboxes"]
    assert capacity.memory_mb == LIMITS.memory_mb
