"""What the use cases share: every call checks the id it is given, and a record changes state
only as the state machine allows, giving its memory back when it stops running."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from lifecycle_support import (
    LIMITS,
    NewSandboxes,
    read_bytes,
    run_python,
    session,
    suspended_session,
    write_bytes,
)

from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import InvalidState, SandboxNotFound
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.reading import get_sandbox, read_output
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.lifecycle.work import list_files
from sandbox.domain.model import SandboxState

pytestmark = pytest.mark.anyio


Call = Callable[[Sandboxes, str], Awaitable[object]]


CALLS: dict[str, Call] = {
    "get": lambda boxes, sandbox_id: get_sandbox(boxes, sandbox_id),
    "read_output": lambda boxes, sandbox_id: read_output(boxes, sandbox_id),
    "exec": lambda boxes, sandbox_id: run_python(boxes, sandbox_id),
    "write_file": lambda boxes, sandbox_id: write_bytes(boxes, sandbox_id, "/tmp/a", b""),
    "read_file": lambda boxes, sandbox_id: read_bytes(boxes, sandbox_id, "/tmp/a"),
    "list_files": lambda boxes, sandbox_id: list_files(boxes, sandbox_id, "/tmp"),
    "suspend": lambda boxes, sandbox_id: suspend_sandbox(boxes, sandbox_id),
    "restore": lambda boxes, sandbox_id: restore_sandbox(boxes, sandbox_id),
    "delete": lambda boxes, sandbox_id: delete_sandbox(boxes, sandbox_id),
}


MALFORMED_IDS = ["", "idle1", "../../etc", "0" * 23, "0" * 25, "A" * 24, "0" * 23 + "\n"]


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("sandbox_id", MALFORMED_IDS)
async def test_a_malformed_id_names_no_sandbox(
    sandboxes: Sandboxes, call: str, sandbox_id: str
) -> None:
    await session(sandboxes)

    with pytest.raises(SandboxNotFound):
        await CALLS[call](sandboxes, sandbox_id)


@pytest.mark.parametrize("call", CALLS)
async def test_an_unknown_well_formed_id_names_no_sandbox(
    sandboxes: Sandboxes, call: str
) -> None:
    with pytest.raises(SandboxNotFound, match="no sandbox with id"):
        await CALLS[call](sandboxes, new_sandbox_id())


async def test_a_move_the_state_machine_forbids_is_refused_and_changes_nothing(
    sandboxes: Sandboxes,
) -> None:
    sandbox = await suspended_session(sandboxes)

    with pytest.raises(InvalidState, match="a suspended sandbox cannot become exited"):
        await sandboxes.save(sandbox, SandboxState.EXITED)

    assert await sandboxes.get(sandbox.sandbox_id) == sandbox


async def test_a_sandbox_saved_as_no_longer_running_gives_its_memory_back(
    new_sandboxes: NewSandboxes,
) -> None:
    capacity = Capacity(max_executions=1, memory_budget_mb=10_000, wait_s=0)
    sandboxes = new_sandboxes(capacity=capacity)
    sandbox = await session(sandboxes)
    held = capacity.memory_mb

    saved = await sandboxes.save(sandbox, SandboxState.FAILED)

    assert (held, capacity.memory_mb) == (LIMITS.memory_mb, 0)
    assert (saved.state, await sandboxes.get(sandbox.sandbox_id)) == (SandboxState.FAILED, saved)
