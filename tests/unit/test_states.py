"""The state machine of a sandbox: which moves are allowed, what a refused one says, and that
a sandbox in any state can be deleted."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from lifecycle_support import (
    ControlledRuntime,
    exited_script,
    read_bytes,
    run_python,
    session,
    suspended_session,
    write_bytes,
)

from sandbox.domain.errors import InvalidState, RuntimeFailure
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.reading import list_sandboxes
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.lifecycle.work import list_files
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


async def failed_session(sandboxes: Sandboxes, runtime: ControlledRuntime) -> Sandbox:
    sandbox = await suspended_session(sandboxes)
    assert sandbox.checkpoint is not None
    await sandboxes.images.remove(sandbox.checkpoint)
    with pytest.raises(RuntimeFailure):
        await restore_sandbox(sandboxes, sandbox.sandbox_id)
    return await sandboxes.get(sandbox.sandbox_id)


Arrange = Callable[[Sandboxes, ControlledRuntime], Awaitable[Sandbox]]


ARRANGE: dict[SandboxState, Arrange] = {
    S.RUNNING: lambda boxes, runtime: session(boxes),
    S.SUSPENDED: lambda boxes, runtime: suspended_session(boxes),
    S.EXITED: lambda boxes, runtime: exited_script(boxes),
    S.FAILED: failed_session,
}


Act = Callable[[Sandboxes, str], Awaitable[object]]


ACT: dict[str, Act] = {
    "suspend": lambda boxes, sandbox_id: suspend_sandbox(boxes, sandbox_id),
    "restore": lambda boxes, sandbox_id: restore_sandbox(boxes, sandbox_id),
    "exec in": lambda boxes, sandbox_id: run_python(boxes, sandbox_id),
    "write files in": lambda boxes, sandbox_id: write_bytes(boxes, sandbox_id, "/tmp/a", b""),
    "read files in": lambda boxes, sandbox_id: read_bytes(boxes, sandbox_id, "/tmp/a"),
    "list files in": lambda boxes, sandbox_id: list_files(boxes, sandbox_id, "/tmp"),
}


NEEDS = {verb: S.SUSPENDED if verb == "restore" else S.RUNNING for verb in ACT}


REFUSED = [
    (state, verb) for state in ARRANGE for verb in ACT if state is not NEEDS[verb]
]


@pytest.mark.parametrize(("state", "verb"), REFUSED)
async def test_a_call_the_state_does_not_allow_is_refused_and_changes_nothing(
    sandboxes: Sandboxes, runtime: ControlledRuntime, state: SandboxState, verb: str
) -> None:
    before = await ARRANGE[state](sandboxes, runtime)

    with pytest.raises(InvalidState) as refused:
        await ACT[verb](sandboxes, before.sandbox_id)

    assert refused.value.code == "invalid_state"
    assert refused.value.message == (
        f"cannot {verb} a sandbox that is {state.value} (it must be {NEEDS[verb].value})"
    )
    assert await sandboxes.get(before.sandbox_id) == before


@pytest.mark.parametrize("state", ARRANGE)
async def test_a_sandbox_in_any_state_can_be_deleted(
    sandboxes: Sandboxes, runtime: ControlledRuntime, state: SandboxState
) -> None:
    sandbox = await ARRANGE[state](sandboxes, runtime)

    await delete_sandbox(sandboxes, sandbox.sandbox_id)

    assert await list_sandboxes(sandboxes) == []
    assert await runtime.leftover_ids() == set()
