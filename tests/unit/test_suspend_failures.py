"""A suspend whose checkpoint fails: the sandbox runs on as it was, or, when the failed
checkpoint ended it (runsc does on a full disk), it is failed with the reason, not exited."""

from __future__ import annotations

import pytest
from lifecycle_support import ControlledRuntime, NewService, chunks, session, settled, whole

from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.lifecycle import SandboxService
from sandbox.domain.model import SandboxState

pytestmark = pytest.mark.anyio


async def test_a_checkpoint_that_fails_and_ends_the_sandbox_leaves_it_failed_and_clean(
    service: SandboxService, runtime: ControlledRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = await session(service)

    async def fail_and_end(sandbox_id: str) -> str:
        await runtime.destroy(sandbox_id)
        raise RuntimeFailure("runsc checkpoint failed: no space left on device")

    monkeypatch.setattr(runtime, "checkpoint", fail_and_end)

    with pytest.raises(RuntimeFailure) as raised:
        await service.suspend(sandbox.sandbox_id)
    record = await settled(service, sandbox.sandbox_id)

    assert record.state is SandboxState.FAILED
    assert record.reason == ("suspend failed and the sandbox ended: "
                             "runsc checkpoint failed: no space left on device")
    assert raised.value.public_message is not None
    assert "now failed" in raised.value.public_message
    assert runtime.live == set()
    assert await runtime.leftover_ids() == set()


async def test_a_checkpoint_that_fails_with_the_sandbox_still_running_leaves_it_running(
    service: SandboxService, runtime: ControlledRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = await session(service)
    await service.write_file(sandbox.sandbox_id, "/workspace/kept", chunks(b"kept"))

    async def fail(sandbox_id: str) -> str:
        raise RuntimeFailure("runsc checkpoint failed: permission denied")

    monkeypatch.setattr(runtime, "checkpoint", fail)

    with pytest.raises(RuntimeFailure) as raised:
        await service.suspend(sandbox.sandbox_id)
    record = await service.get(sandbox.sandbox_id)

    assert record.state is SandboxState.RUNNING
    assert raised.value.public_message is None
    assert await whole(service.read_file(sandbox.sandbox_id, "/workspace/kept")) == b"kept"


async def test_a_restore_that_fails_tells_the_client_the_sandbox_is_now_failed(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await service.suspend((await session(service)).sandbox_id)
    assert sandbox.checkpoint is not None
    await runtime.discard_checkpoint(sandbox.checkpoint)

    with pytest.raises(RuntimeFailure) as raised:
        await service.restore(sandbox.sandbox_id)

    assert raised.value.public_message is not None
    assert "now failed" in raised.value.public_message
    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.FAILED


async def test_a_session_whose_suspend_on_restart_ends_it_stays_failed_with_that_reason(
    new_service: NewService, runtime: ControlledRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = new_service()
    sandbox = await session(before)
    await before.close()

    async def fail_and_end(sandbox_id: str) -> str:
        await runtime.destroy(sandbox_id)
        raise RuntimeFailure("runsc checkpoint failed: no space left on device")

    monkeypatch.setattr(runtime, "checkpoint", fail_and_end)
    after = new_service()
    await after.reconcile()

    reconciled = await after.get(sandbox.sandbox_id)
    assert reconciled.state is SandboxState.FAILED
    assert reconciled.reason.startswith("suspend failed and the sandbox ended: ")
    assert await runtime.leftover_ids() == set()
