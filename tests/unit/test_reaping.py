"""The timers: idle sessions are suspended, and ended and suspended sandboxes are deleted
after their retention. The clock is moved by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from lifecycle_support import (
    LIMITS,
    ControlledRuntime,
    ManualClock,
    NewSandboxes,
    exited_script,
    policy,
    run_python,
    session,
    suspended_session,
    write_bytes,
)
from structlog.testing import capture_logs

from sandbox.adapters.memory_leases import InMemoryLeaseStore
from sandbox.adapters.memory_store import InMemorySandboxStore
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.lifecycle.creation import run_detached
from sandbox.domain.lifecycle.reading import list_sandboxes
from sandbox.domain.lifecycle.reaping import reap
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Language, Sandbox, SandboxState
from sandbox.domain.reasons import ReasonCode

pytestmark = pytest.mark.anyio


async def test_reap_suspends_a_session_idle_past_its_idle_timeout(
    sandboxes: Sandboxes, clock: ManualClock, runtime: ControlledRuntime
) -> None:
    sandbox = await session(sandboxes, idle_timeout_s=60)
    clock.advance(61)

    await reap(sandboxes)

    reaped = await sandboxes.get(sandbox.sandbox_id)
    assert reaped.state is SandboxState.SUSPENDED
    assert (reaped.reason_code, reaped.reason) == (ReasonCode.IDLE_SUSPENDED,
                                                   "suspended after 60 s idle")
    assert runtime.live == set()


async def test_reap_leaves_a_session_idle_for_less_than_its_idle_timeout(
    sandboxes: Sandboxes, clock: ManualClock
) -> None:
    sandbox = await session(sandboxes, idle_timeout_s=60)
    clock.advance(59)

    await reap(sandboxes)

    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_reap_leaves_a_session_without_idle_timeout_running_however_long(
    sandboxes: Sandboxes, clock: ManualClock
) -> None:
    sandbox = await session(sandboxes)
    clock.advance(10**9)

    await reap(sandboxes)

    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_work_in_a_session_restarts_its_idle_time(
    sandboxes: Sandboxes, clock: ManualClock
) -> None:
    sandbox = await session(sandboxes, idle_timeout_s=60)
    clock.advance(50)
    await write_bytes(sandboxes, sandbox.sandbox_id, "/tmp/a", b"")
    clock.advance(50)

    await reap(sandboxes)

    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_reap_leaves_a_session_with_an_exec_in_progress(
    sandboxes: Sandboxes, clock: ManualClock, runtime: ControlledRuntime
) -> None:
    sandbox = await session(sandboxes, idle_timeout_s=60)
    runtime.hold_execs()
    working = asyncio.create_task(run_python(sandboxes, sandbox.sandbox_id))
    await runtime.exec_entered.wait()
    clock.advance(61)

    await reap(sandboxes)
    runtime.release_execs()
    await working

    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_idle_time_counts_from_the_end_of_a_long_exec(
    sandboxes: Sandboxes, clock: ManualClock, runtime: ControlledRuntime
) -> None:
    sandbox = await session(sandboxes, idle_timeout_s=60)
    runtime.hold_execs()
    working = asyncio.create_task(run_python(sandboxes, sandbox.sandbox_id))
    await runtime.exec_entered.wait()
    clock.advance(100)
    runtime.release_execs()
    await working
    clock.advance(30)

    await reap(sandboxes)

    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


class StoreWithStaleList(InMemorySandboxStore):
    """Runs `meanwhile` right after answering its next list: what the caller got is old."""

    meanwhile: Callable[[], Awaitable[object]] | None = None

    async def list(self, state: SandboxState | None = None) -> list[Sandbox]:
        found = await super().list(state)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return found


async def test_reap_leaves_a_session_that_became_busy_after_reap_listed_it(
    new_sandboxes: NewSandboxes, clock: ManualClock, leases: InMemoryLeaseStore
) -> None:
    store = StoreWithStaleList(leases)
    sandboxes = new_sandboxes(policy(), store)
    sandbox = await session(sandboxes, idle_timeout_s=60)
    clock.advance(61)
    store.meanwhile = lambda: write_bytes(sandboxes, sandbox.sandbox_id, "/tmp/a", b"")

    await reap(sandboxes)

    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


POLICY = policy(retention_s=100, suspended_retention_s=1000)


async def test_reap_deletes_an_exited_sandbox_older_than_the_retention_and_says_why(
    new_sandboxes: NewSandboxes, clock: ManualClock
) -> None:
    sandboxes = new_sandboxes(POLICY)
    sandbox = await exited_script(sandboxes)
    clock.advance(101)

    with capture_logs() as logs:
        await reap(sandboxes)

    assert await list_sandboxes(sandboxes) == []
    assert {"event": "sandbox.deleted", "sandbox_id": sandbox.sandbox_id,
            "state": "exited", "reason_code": ReasonCode.EXPIRED,
            "reason": "kept past its retention of 100 s", "log_level": "info"} in logs


async def test_reap_keeps_an_exited_sandbox_within_the_retention(
    new_sandboxes: NewSandboxes, clock: ManualClock
) -> None:
    sandboxes = new_sandboxes(POLICY)
    sandbox = await exited_script(sandboxes)
    clock.advance(99)

    await reap(sandboxes)

    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.EXITED


async def test_reap_keeps_a_suspended_sandbox_for_the_longer_suspended_retention(
    new_sandboxes: NewSandboxes, clock: ManualClock
) -> None:
    sandboxes = new_sandboxes(POLICY)
    sandbox = await suspended_session(sandboxes)
    clock.advance(999)

    await reap(sandboxes)

    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.SUSPENDED


async def test_reap_deletes_a_suspended_sandbox_older_than_its_retention_and_says_why(
    new_sandboxes: NewSandboxes, clock: ManualClock, runtime: ControlledRuntime
) -> None:
    sandboxes = new_sandboxes(POLICY)
    sandbox = await suspended_session(sandboxes)
    clock.advance(1001)

    with capture_logs() as logs:
        await reap(sandboxes)

    assert await list_sandboxes(sandboxes) == []
    assert await runtime.leftover_ids() == set()
    assert {"event": "sandbox.deleted", "sandbox_id": sandbox.sandbox_id,
            "state": "suspended", "reason_code": ReasonCode.EXPIRED,
            "reason": "kept past its retention of 1000 s", "log_level": "info"} in logs


async def test_reap_never_deletes_a_running_sandbox(
    new_sandboxes: NewSandboxes, clock: ManualClock
) -> None:
    sandboxes = new_sandboxes(POLICY)
    sandbox = await run_detached(sandboxes, Language.BASH, b"sleep 60\n", LIMITS)
    clock.advance(10**6)

    await reap(sandboxes)

    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_reap_goes_on_after_one_sandbox_fails_and_logs_the_failure(
    new_sandboxes: NewSandboxes,
    clock: ManualClock,
    runtime: ControlledRuntime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandboxes = new_sandboxes(POLICY)
    stuck = await session(sandboxes, idle_timeout_s=60)
    await exited_script(sandboxes)
    clock.advance(101)

    async def refuse(sandbox_id: str) -> str:
        raise RuntimeFailure("checkpoint failed")

    monkeypatch.setattr(runtime, "checkpoint", refuse)
    with capture_logs() as logs:
        await reap(sandboxes)

    assert await list_sandboxes(sandboxes) == [await sandboxes.get(stuck.sandbox_id)]
    assert (await sandboxes.get(stuck.sandbox_id)).state is SandboxState.RUNNING
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == [
        "sandbox.suspend_failed", "sandbox.reap_failed"
    ]


async def test_reap_keeps_a_sandbox_restored_after_reap_listed_it(
    new_sandboxes: NewSandboxes, clock: ManualClock, leases: InMemoryLeaseStore
) -> None:
    store = StoreWithStaleList(leases)
    sandboxes = new_sandboxes(POLICY, store)
    sandbox = await suspended_session(sandboxes)
    clock.advance(1001)
    store.meanwhile = lambda: restore_sandbox(sandboxes, sandbox.sandbox_id)

    await reap(sandboxes)

    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING
