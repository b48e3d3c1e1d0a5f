"""Suspend: a checkpoint of a running sandbox; what happens when it overlaps an exec or
another suspend, and when the checkpoint fails (the sandbox runs on as it was, or, when the
failed checkpoint ended it, as runsc does on a full disk, it is failed, saying so)."""

from __future__ import annotations

import asyncio

import pytest
from lifecycle_support import (
    ControlledRuntime,
    read_bytes,
    run_python,
    session,
    settled,
    write_bytes,
)

from sandbox.domain.errors import InvalidState, RuntimeFailure
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.reasons import ReasonCode

pytestmark = pytest.mark.anyio


async def test_of_two_suspends_at_once_one_succeeds_and_the_other_is_refused(
    sandboxes: Sandboxes,
) -> None:
    sandbox = await session(sandboxes)

    results = await asyncio.gather(suspend_sandbox(sandboxes, sandbox.sandbox_id),
                                   suspend_sandbox(sandboxes, sandbox.sandbox_id),
                                   return_exceptions=True)

    [suspended] = [result for result in results if isinstance(result, Sandbox)]
    [refused] = [result for result in results if isinstance(result, InvalidState)]
    assert suspended.state is SandboxState.SUSPENDED
    assert "suspended" in refused.message
    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.SUSPENDED


async def test_a_suspend_during_an_exec_is_refused_as_busy(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await session(sandboxes)
    runtime.hold_execs()
    working = asyncio.create_task(run_python(sandboxes, sandbox.sandbox_id, 'print("done")'))
    await runtime.exec_entered.wait()

    with pytest.raises(InvalidState, match="busy"):
        await suspend_sandbox(sandboxes, sandbox.sandbox_id)
    runtime.release_execs()
    result = await working

    assert result.stdout.text == "done\n"
    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_a_suspend_after_the_exec_has_finished_succeeds(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await session(sandboxes)
    runtime.hold_execs()
    working = asyncio.create_task(run_python(sandboxes, sandbox.sandbox_id))
    await runtime.exec_entered.wait()
    runtime.release_execs()
    await working

    suspended = await suspend_sandbox(sandboxes, sandbox.sandbox_id)

    assert suspended.state is SandboxState.SUSPENDED


async def test_a_checkpoint_that_fails_and_ends_the_sandbox_leaves_it_failed_and_clean(
    sandboxes: Sandboxes, runtime: ControlledRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = await session(sandboxes)

    async def fail_and_end(sandbox_id: str) -> str:
        await runtime.destroy(sandbox_id)
        raise RuntimeFailure("runsc checkpoint failed: no space left on device")

    monkeypatch.setattr(runtime, "checkpoint", fail_and_end)

    with pytest.raises(RuntimeFailure) as raised:
        await suspend_sandbox(sandboxes, sandbox.sandbox_id)
    record = await settled(sandboxes, sandbox.sandbox_id)

    assert record.state is SandboxState.FAILED
    assert record.reason_code is ReasonCode.SUSPEND_FAILED
    assert raised.value.public_message is not None
    assert "now failed" in raised.value.public_message
    assert runtime.live == set()
    assert await runtime.leftover_ids() == set()


async def test_a_checkpoint_that_fails_with_the_sandbox_still_running_leaves_it_running(
    sandboxes: Sandboxes, runtime: ControlledRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = await session(sandboxes)
    await write_bytes(sandboxes, sandbox.sandbox_id, "/workspace/kept", b"kept")

    async def fail(sandbox_id: str) -> str:
        raise RuntimeFailure("runsc checkpoint failed: permission denied")

    monkeypatch.setattr(runtime, "checkpoint", fail)

    with pytest.raises(RuntimeFailure) as raised:
        await suspend_sandbox(sandboxes, sandbox.sandbox_id)
    record = await sandboxes.get(sandbox.sandbox_id)

    assert record.state is SandboxState.RUNNING
    assert raised.value.public_message is None
    assert await read_bytes(sandboxes, sandbox.sandbox_id, "/workspace/kept") == b"kept"
