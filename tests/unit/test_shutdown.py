"""A graceful stop suspends what runs, within its grace period, so that a restart loses
nothing; the supervisors end with it."""

from __future__ import annotations

import asyncio

import pytest
from lifecycle_support import (
    ControlledRuntime,
    NewSandboxes,
    policy,
    read_bytes,
    session,
    write_bytes,
)
from structlog.testing import capture_logs

from sandbox.domain.lifecycle.reconciliation import reconcile
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.shutdown import shut_down
from sandbox.domain.model import SandboxState
from sandbox.domain.reasons import ReasonCode

pytestmark = pytest.mark.anyio


async def test_a_graceful_stop_suspends_what_runs_so_a_restart_can_restore_it(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime
) -> None:
    before = new_sandboxes(policy(suspend_on_shutdown=True))
    sandbox = await session(before)
    await write_bytes(before, sandbox.sandbox_id, "/workspace/notes", b"kept")

    await shut_down(before)
    after = new_sandboxes()
    await reconcile(after)

    stopped = await after.get(sandbox.sandbox_id)
    assert stopped.state is SandboxState.SUSPENDED
    assert (stopped.reason_code, stopped.reason) == (ReasonCode.SERVER_STOPPED,
                                                     "suspended when the server stopped")
    await restore_sandbox(after, sandbox.sandbox_id)
    assert await read_bytes(after, sandbox.sandbox_id, "/workspace/notes") == b"kept"


async def test_a_stop_past_its_grace_period_leaves_the_rest_to_the_next_start(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandboxes = new_sandboxes(policy(suspend_on_shutdown=True, shutdown_grace_s=0.05))
    sandbox = await session(sandboxes)

    async def stuck(sandbox_id: str) -> str:
        await asyncio.Event().wait()
        raise AssertionError("never reached")

    monkeypatch.setattr(runtime, "checkpoint", stuck)
    with capture_logs() as logs:
        await shut_down(sandboxes)

    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING
    assert "sandbox.shutdown_grace_expired" in [entry["event"] for entry in logs]
    assert sandboxes.supervisors == {}
    assert runtime.live == {sandbox.sandbox_id}
