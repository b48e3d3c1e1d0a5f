"""Time: a detached script's limit (which spans suspends), idle sessions, and how long ended
and suspended sandboxes are kept. The service's clock is moved by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from lifecycle_support import (
    LIMITS,
    ControlledRuntime,
    ManualClock,
    NewService,
    chunks,
    exited_script,
    python,
    session,
    settled,
    suspended_session,
)
from structlog.testing import capture_logs

from sandbox.adapters.memory_store import InMemorySandboxStore
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.lifecycle import LifecyclePolicy, SandboxService
from sandbox.domain.model import Language, Limits, Sandbox, SandboxState

pytestmark = pytest.mark.anyio


async def test_a_detached_script_past_its_time_limit_is_ended_as_timed_out(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await service.run_detached(Language.PYTHON, b"time.sleep(30)\n",
                                         Limits(timeout_s=0.05))

    ended = await settled(service, sandbox.sandbox_id)

    assert (ended.state, ended.exit_code) == (SandboxState.EXITED, None)
    assert ended.reason == "timed out after 0.05 s"
    assert runtime.live == set()


async def test_only_the_time_a_detached_script_ran_counts_not_the_time_it_was_suspended(
    service: SandboxService, clock: ManualClock
) -> None:
    sandbox = await service.run_detached(Language.PYTHON, b"time.sleep(60)\n",
                                         Limits(timeout_s=30))
    clock.advance(6)
    await service.suspend(sandbox.sandbox_id)
    clock.advance(1000)
    await service.restore(sandbox.sandbox_id)
    clock.advance(3)

    suspended_again = await service.suspend(sandbox.sandbox_id)

    assert suspended_again.run_seconds == 9


async def test_a_detached_script_that_used_up_its_time_before_a_suspend_times_out_on_restore(
    service: SandboxService, clock: ManualClock, runtime: ControlledRuntime
) -> None:
    sandbox = await service.run_detached(Language.PYTHON, b"time.sleep(60)\n",
                                         Limits(timeout_s=30))
    clock.advance(31)
    await service.suspend(sandbox.sandbox_id)
    await service.restore(sandbox.sandbox_id)

    ended = await settled(service, sandbox.sandbox_id)

    assert (ended.state, ended.reason) == (SandboxState.EXITED, "timed out after 30 s")
    assert ended.run_seconds == 31
    assert runtime.live == set()


async def test_a_session_has_no_time_limit_of_its_own(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await service.create_session(Language.PYTHON, Limits(timeout_s=0.01))

    result = await service.exec(sandbox.sandbox_id, python("time.sleep(0.05)"), b"", 1)

    assert result.outcome.timed_out is False
    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING
    assert runtime.live == {sandbox.sandbox_id}


# Idle sessions ----------------------------------------------------------------------------


async def test_reap_suspends_a_session_idle_past_its_idle_timeout(
    service: SandboxService, clock: ManualClock, runtime: ControlledRuntime
) -> None:
    sandbox = await session(service, idle_timeout_s=60)
    clock.advance(61)

    await service.reap()

    reaped = await service.get(sandbox.sandbox_id)
    assert reaped.state is SandboxState.SUSPENDED
    assert reaped.reason == "suspended after 60 s idle"
    assert runtime.live == set()


async def test_reap_leaves_a_session_idle_for_less_than_its_idle_timeout(
    service: SandboxService, clock: ManualClock
) -> None:
    sandbox = await session(service, idle_timeout_s=60)
    clock.advance(59)

    await service.reap()

    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_reap_leaves_a_session_without_idle_timeout_running_however_long(
    service: SandboxService, clock: ManualClock
) -> None:
    sandbox = await session(service)
    clock.advance(10**9)

    await service.reap()

    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_work_in_a_session_restarts_its_idle_time(
    service: SandboxService, clock: ManualClock
) -> None:
    sandbox = await session(service, idle_timeout_s=60)
    clock.advance(50)
    await service.write_file(sandbox.sandbox_id, "/tmp/a", chunks(b""))
    clock.advance(50)

    await service.reap()

    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_reap_leaves_a_session_with_an_exec_in_progress(
    service: SandboxService, clock: ManualClock, runtime: ControlledRuntime
) -> None:
    sandbox = await session(service, idle_timeout_s=60)
    runtime.hold_execs()
    working = asyncio.create_task(service.exec(sandbox.sandbox_id, python(""), b"", None))
    await runtime.exec_entered.wait()
    clock.advance(61)

    await service.reap()
    runtime.release_execs()
    await working

    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_idle_time_counts_from_the_end_of_a_long_exec(
    service: SandboxService, clock: ManualClock, runtime: ControlledRuntime
) -> None:
    sandbox = await session(service, idle_timeout_s=60)
    runtime.hold_execs()
    working = asyncio.create_task(service.exec(sandbox.sandbox_id, python(""), b"", None))
    await runtime.exec_entered.wait()
    clock.advance(100)
    runtime.release_execs()
    await working
    clock.advance(30)

    await service.reap()

    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


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
    new_service: NewService, clock: ManualClock
) -> None:
    store = StoreWithStaleList()
    service = new_service(LifecyclePolicy(), store)
    sandbox = await session(service, idle_timeout_s=60)
    clock.advance(61)
    store.meanwhile = lambda: service.write_file(sandbox.sandbox_id, "/tmp/a", chunks(b""))

    await service.reap()

    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


# Retention --------------------------------------------------------------------------------

POLICY = LifecyclePolicy(retention_s=100, suspended_retention_s=1000)


async def test_reap_deletes_an_exited_sandbox_older_than_the_retention_and_says_why(
    new_service: NewService, clock: ManualClock
) -> None:
    service = new_service(POLICY)
    sandbox = await exited_script(service)
    clock.advance(101)

    with capture_logs() as logs:
        await service.reap()

    assert await service.list_sandboxes() == []
    assert {"event": "sandbox.deleted", "sandbox_id": sandbox.sandbox_id,
            "reason": "exited for longer than 100 s", "log_level": "info"} in logs


async def test_reap_keeps_an_exited_sandbox_within_the_retention(
    new_service: NewService, clock: ManualClock
) -> None:
    service = new_service(POLICY)
    sandbox = await exited_script(service)
    clock.advance(99)

    await service.reap()

    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.EXITED


async def test_reap_keeps_a_suspended_sandbox_for_the_longer_suspended_retention(
    new_service: NewService, clock: ManualClock
) -> None:
    service = new_service(POLICY)
    sandbox = await suspended_session(service)
    clock.advance(999)

    await service.reap()

    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.SUSPENDED


async def test_reap_deletes_a_suspended_sandbox_older_than_its_retention_and_says_why(
    new_service: NewService, clock: ManualClock, runtime: ControlledRuntime
) -> None:
    service = new_service(POLICY)
    sandbox = await suspended_session(service)
    clock.advance(1001)

    with capture_logs() as logs:
        await service.reap()

    assert await service.list_sandboxes() == []
    assert await runtime.leftover_ids() == set()
    assert {"event": "sandbox.deleted", "sandbox_id": sandbox.sandbox_id,
            "reason": "suspended for longer than 1000 s", "log_level": "info"} in logs


async def test_reap_never_deletes_a_running_sandbox(
    new_service: NewService, clock: ManualClock
) -> None:
    service = new_service(POLICY)
    sandbox = await service.run_detached(Language.BASH, b"sleep 60\n", LIMITS)
    clock.advance(10**6)

    await service.reap()

    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_reap_goes_on_after_one_sandbox_fails_and_logs_the_failure(
    new_service: NewService,
    clock: ManualClock,
    runtime: ControlledRuntime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = new_service(POLICY)
    stuck = await session(service, idle_timeout_s=60)
    await exited_script(service)
    clock.advance(101)

    async def refuse(sandbox_id: str) -> str:
        raise RuntimeFailure("checkpoint failed")

    monkeypatch.setattr(runtime, "checkpoint", refuse)
    with capture_logs() as logs:
        await service.reap()

    assert await service.list_sandboxes() == [await service.get(stuck.sandbox_id)]
    assert (await service.get(stuck.sandbox_id)).state is SandboxState.RUNNING
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == [
        "sandbox.suspend_failed", "sandbox.reap_failed"
    ]


async def test_reap_keeps_a_sandbox_restored_after_reap_listed_it(
    new_service: NewService, clock: ManualClock
) -> None:
    store = StoreWithStaleList()
    service = new_service(POLICY, store)
    sandbox = await suspended_session(service)
    clock.advance(1001)
    store.meanwhile = lambda: service.restore(sandbox.sandbox_id)

    await service.reap()

    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING
