"""The state machine of a sandbox: which moves are allowed, what a refused one says, and what
happens when calls on one sandbox overlap."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from lifecycle_support import (
    ControlledRuntime,
    chunks,
    exited_script,
    python,
    session,
    suspended_session,
    whole,
)

from sandbox.domain.errors import CheckpointMismatch, InvalidState, RuntimeFailure, SandboxNotFound
from sandbox.domain.lifecycle import SandboxService
from sandbox.domain.model import Sandbox, SandboxState, can_move

pytestmark = pytest.mark.anyio

S = SandboxState
DOCUMENTED = {
    (S.CREATING, S.RUNNING), (S.RUNNING, S.EXITED), (S.RUNNING, S.SUSPENDED),
    (S.SUSPENDED, S.RUNNING), (S.CREATING, S.FAILED), (S.RUNNING, S.FAILED),
    (S.SUSPENDED, S.FAILED),
}


def test_only_the_documented_moves_between_states_are_allowed() -> None:
    allowed = {(source, target) for source in S for target in S if can_move(source, target)}

    assert allowed == DOCUMENTED


async def failed_session(service: SandboxService, runtime: ControlledRuntime) -> Sandbox:
    sandbox = await suspended_session(service)
    assert sandbox.checkpoint is not None
    await runtime.discard_checkpoint(sandbox.checkpoint)
    with pytest.raises(RuntimeFailure):
        await service.restore(sandbox.sandbox_id)
    return await service.get(sandbox.sandbox_id)


Arrange = Callable[[SandboxService, ControlledRuntime], Awaitable[Sandbox]]

ARRANGE: dict[SandboxState, Arrange] = {
    S.RUNNING: lambda service, runtime: session(service),
    S.SUSPENDED: lambda service, runtime: suspended_session(service),
    S.EXITED: lambda service, runtime: exited_script(service),
    S.FAILED: failed_session,
}

Act = Callable[[SandboxService, str], Awaitable[object]]

ACT: dict[str, Act] = {
    "suspend": lambda service, sandbox_id: service.suspend(sandbox_id),
    "restore": lambda service, sandbox_id: service.restore(sandbox_id),
    "exec in": lambda service, sandbox_id: service.exec(sandbox_id, python(""), b"", None),
    "write files in":
        lambda service, sandbox_id: service.write_file(sandbox_id, "/tmp/a", chunks(b"")),
    "read files in": lambda service, sandbox_id: whole(service.read_file(sandbox_id, "/tmp/a")),
    "list files in": lambda service, sandbox_id: service.list_files(sandbox_id, "/tmp"),
}
NEEDS = {verb: S.SUSPENDED if verb == "restore" else S.RUNNING for verb in ACT}

REFUSED = [
    (state, verb) for state in ARRANGE for verb in ACT if state is not NEEDS[verb]
]


@pytest.mark.parametrize(("state", "verb"), REFUSED)
async def test_a_call_the_state_does_not_allow_is_refused_and_changes_nothing(
    service: SandboxService, runtime: ControlledRuntime, state: SandboxState, verb: str
) -> None:
    before = await ARRANGE[state](service, runtime)

    with pytest.raises(InvalidState) as refused:
        await ACT[verb](service, before.sandbox_id)

    assert refused.value.code == "invalid_state"
    assert refused.value.message == (
        f"cannot {verb} a sandbox that is {state.value} (it must be {NEEDS[verb].value})"
    )
    assert await service.get(before.sandbox_id) == before


@pytest.mark.parametrize("state", ARRANGE)
async def test_a_sandbox_in_any_state_can_be_deleted(
    service: SandboxService, runtime: ControlledRuntime, state: SandboxState
) -> None:
    sandbox = await ARRANGE[state](service, runtime)

    await service.delete(sandbox.sandbox_id)

    assert await service.list_sandboxes() == []
    assert await runtime.leftover_ids() == set()


async def test_a_second_delete_finds_nothing(service: SandboxService) -> None:
    sandbox = await session(service)
    await service.delete(sandbox.sandbox_id)

    with pytest.raises(SandboxNotFound):
        await service.delete(sandbox.sandbox_id)


# Overlapping calls ------------------------------------------------------------------------


async def test_of_two_suspends_at_once_one_succeeds_and_the_other_is_refused(
    service: SandboxService,
) -> None:
    sandbox = await session(service)

    results = await asyncio.gather(service.suspend(sandbox.sandbox_id),
                                   service.suspend(sandbox.sandbox_id), return_exceptions=True)

    [suspended] = [result for result in results if isinstance(result, Sandbox)]
    [refused] = [result for result in results if isinstance(result, InvalidState)]
    assert suspended.state is SandboxState.SUSPENDED
    assert "suspended" in refused.message
    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.SUSPENDED


async def test_of_two_restores_at_once_one_succeeds_and_the_other_is_refused(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await suspended_session(service)

    results = await asyncio.gather(service.restore(sandbox.sandbox_id),
                                   service.restore(sandbox.sandbox_id), return_exceptions=True)

    assert sorted(type(result).__name__ for result in results) == ["InvalidState", "Sandbox"]
    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING
    assert runtime.live == {sandbox.sandbox_id}


async def test_a_suspend_during_an_exec_is_refused_as_busy(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await session(service)
    runtime.hold_execs()
    working = asyncio.create_task(service.exec(sandbox.sandbox_id, python('print("done")'),
                                               b"", None))
    await runtime.exec_entered.wait()

    with pytest.raises(InvalidState, match="busy"):
        await service.suspend(sandbox.sandbox_id)
    runtime.release_execs()
    result = await working

    assert result.stdout.text == "done\n"
    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_a_suspend_after_the_exec_has_finished_succeeds(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await session(service)
    runtime.hold_execs()
    working = asyncio.create_task(service.exec(sandbox.sandbox_id, python(""), b"", None))
    await runtime.exec_entered.wait()
    runtime.release_execs()
    await working

    suspended = await service.suspend(sandbox.sandbox_id)

    assert suspended.state is SandboxState.SUSPENDED


async def test_a_delete_during_an_exec_removes_the_sandbox(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await session(service)
    runtime.hold_execs()
    working = asyncio.create_task(service.exec(sandbox.sandbox_id, python(""), b"", None))
    await runtime.exec_entered.wait()

    await service.delete(sandbox.sandbox_id)
    runtime.release_execs()
    await asyncio.gather(working, return_exceptions=True)

    with pytest.raises(SandboxNotFound):
        await service.get(sandbox.sandbox_id)
    assert runtime.live == set()
    assert await runtime.leftover_ids() == set()


# Restore ----------------------------------------------------------------------------------


async def test_a_checkpoint_from_another_runtime_is_refused_and_stays_suspended(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await suspended_session(service)
    runtime.version = "fake-2"

    with pytest.raises(CheckpointMismatch) as refused:
        await service.restore(sandbox.sandbox_id)

    assert refused.value.code == "checkpoint_mismatch"
    assert "runtime fake," in refused.value.message
    assert "runtime fake-2" in refused.value.message
    assert await service.get(sandbox.sandbox_id) == sandbox
    assert sandbox.sandbox_id in await runtime.leftover_ids()


async def test_a_refused_checkpoint_is_restored_once_the_runtime_matches_again(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await suspended_session(service)
    runtime.version = "fake-2"
    with pytest.raises(CheckpointMismatch):
        await service.restore(sandbox.sandbox_id)
    runtime.version = "fake"

    restored = await service.restore(sandbox.sandbox_id)

    assert restored.state is SandboxState.RUNNING


async def test_a_restore_that_the_runtime_cannot_do_marks_the_sandbox_failed(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await suspended_session(service)
    assert sandbox.checkpoint is not None
    await runtime.discard_checkpoint(sandbox.checkpoint)

    with pytest.raises(RuntimeFailure):
        await service.restore(sandbox.sandbox_id)

    failed = await service.get(sandbox.sandbox_id)
    assert failed.state is SandboxState.FAILED
    assert failed.reason.startswith("restore failed: ")
    assert runtime.live == set()


async def test_a_session_can_be_suspended_and_restored_again_and_again(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await session(service)
    await service.write_file(sandbox.sandbox_id, "/tmp/kept", chunks(b"1"))

    for _ in range(3):
        await service.suspend(sandbox.sandbox_id)
        await service.restore(sandbox.sandbox_id)

    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING
    assert await whole(service.read_file(sandbox.sandbox_id, "/tmp/kept")) == b"1"
    assert await runtime.leftover_ids() == {sandbox.sandbox_id}
