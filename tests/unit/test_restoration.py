"""Restore: the sandbox continues from its checkpoint, or is refused, or fails clearly."""

from __future__ import annotations

import asyncio

import pytest
from lifecycle_support import ControlledRuntime, read_bytes, session, suspended_session, write_bytes

from sandbox.domain.errors import CheckpointMismatch, RuntimeFailure
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.model import SandboxSpec, SandboxState
from sandbox.domain.ports import OutputSink
from sandbox.domain.reasons import ReasonCode

pytestmark = pytest.mark.anyio


async def test_files_of_a_session_survive_a_suspend_and_restore(sandboxes: Sandboxes) -> None:
    sandbox = await session(sandboxes)
    await write_bytes(sandboxes, sandbox.sandbox_id, "/workspace/data.txt", b"kept")

    await suspend_sandbox(sandboxes, sandbox.sandbox_id)
    restored = await restore_sandbox(sandboxes, sandbox.sandbox_id)

    assert (restored.state, restored.reason_code) == (SandboxState.RUNNING, ReasonCode.RESTORED)
    assert await read_bytes(sandboxes, sandbox.sandbox_id, "/workspace/data.txt") == b"kept"


async def test_of_two_restores_at_once_one_succeeds_and_the_other_is_refused(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await suspended_session(sandboxes)

    results = await asyncio.gather(restore_sandbox(sandboxes, sandbox.sandbox_id),
                                   restore_sandbox(sandboxes, sandbox.sandbox_id),
                                   return_exceptions=True)

    assert sorted(type(result).__name__ for result in results) == ["InvalidState", "Sandbox"]
    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING
    assert runtime.live == {sandbox.sandbox_id}


async def test_a_checkpoint_from_another_runtime_is_refused_and_stays_suspended(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await suspended_session(sandboxes)
    runtime.version = "fake-2"

    with pytest.raises(CheckpointMismatch) as refused:
        await restore_sandbox(sandboxes, sandbox.sandbox_id)

    assert refused.value.code == "checkpoint_mismatch"
    assert "runtime fake," in refused.value.message
    assert "runtime fake-2" in refused.value.message
    assert await sandboxes.get(sandbox.sandbox_id) == sandbox
    assert sandbox.checkpoint is not None
    assert await sandboxes.images.manifest(sandbox.checkpoint) is not None


async def test_a_refused_checkpoint_is_restored_once_the_runtime_matches_again(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await suspended_session(sandboxes)
    runtime.version = "fake-2"
    with pytest.raises(CheckpointMismatch):
        await restore_sandbox(sandboxes, sandbox.sandbox_id)
    runtime.version = "fake"

    restored = await restore_sandbox(sandboxes, sandbox.sandbox_id)

    assert restored.state is SandboxState.RUNNING


async def test_a_restore_that_the_runtime_cannot_do_marks_the_sandbox_failed(
    sandboxes: Sandboxes, runtime: ControlledRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = await suspended_session(sandboxes)

    async def broken(spec: SandboxSpec, image: str, sink: OutputSink) -> None:
        raise RuntimeFailure("runsc restore failed: the image is damaged")

    monkeypatch.setattr(runtime, "restore", broken)

    with pytest.raises(RuntimeFailure):
        await restore_sandbox(sandboxes, sandbox.sandbox_id)

    failed = await sandboxes.get(sandbox.sandbox_id)
    assert failed.state is SandboxState.FAILED
    assert failed.reason_code is ReasonCode.RESTORE_FAILED
    assert runtime.live == set()


async def test_a_restore_that_fails_tells_the_client_the_sandbox_is_now_failed(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await suspend_sandbox(sandboxes, (await session(sandboxes)).sandbox_id)
    assert sandbox.checkpoint is not None
    await sandboxes.images.remove(sandbox.checkpoint)  # a bucket lost it, say

    with pytest.raises(RuntimeFailure) as raised:
        await restore_sandbox(sandboxes, sandbox.sandbox_id)

    assert raised.value.public_message is not None
    assert "now failed" in raised.value.public_message
    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.FAILED


async def test_a_session_can_be_suspended_and_restored_again_and_again(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await session(sandboxes)
    await write_bytes(sandboxes, sandbox.sandbox_id, "/tmp/kept", b"1")

    for _ in range(3):
        await suspend_sandbox(sandboxes, sandbox.sandbox_id)
        await restore_sandbox(sandboxes, sandbox.sandbox_id)

    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING
    assert await read_bytes(sandboxes, sandbox.sandbox_id, "/tmp/kept") == b"1"
    assert await runtime.leftover_ids() == {sandbox.sandbox_id}
    assert await sandboxes.images.published() == []
