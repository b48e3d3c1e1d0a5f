"""Delete: the record, the output and everything on the host, in any state."""

from __future__ import annotations

import asyncio

import pytest
from lifecycle_support import (
    ControlledRuntime,
    exited_script,
    run_python,
    session,
    suspended_session,
)

from sandbox.adapters.memory_store import InMemoryOutputLog
from sandbox.domain.errors import SandboxNotFound
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.reading import list_sandboxes
from sandbox.domain.lifecycle.sandboxes import Sandboxes

pytestmark = pytest.mark.anyio


async def test_delete_removes_the_record_the_output_and_everything_on_the_host(
    sandboxes: Sandboxes, runtime: ControlledRuntime, outputs: InMemoryOutputLog
) -> None:
    sandbox = await exited_script(sandboxes, 'print("out")')

    await delete_sandbox(sandboxes, sandbox.sandbox_id)

    with pytest.raises(SandboxNotFound):
        await sandboxes.get(sandbox.sandbox_id)
    assert await list_sandboxes(sandboxes) == []
    assert await outputs.ids() == set()
    assert await runtime.leftover_ids() == set()


async def test_deleting_a_suspended_session_removes_its_checkpoint(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await suspended_session(sandboxes)

    await delete_sandbox(sandboxes, sandbox.sandbox_id)

    assert await runtime.leftover_ids() == set()


async def test_a_second_delete_finds_nothing(sandboxes: Sandboxes) -> None:
    sandbox = await session(sandboxes)
    await delete_sandbox(sandboxes, sandbox.sandbox_id)

    with pytest.raises(SandboxNotFound):
        await delete_sandbox(sandboxes, sandbox.sandbox_id)


async def test_a_delete_during_an_exec_removes_the_sandbox(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await session(sandboxes)
    runtime.hold_execs()
    working = asyncio.create_task(run_python(sandboxes, sandbox.sandbox_id))
    await runtime.exec_entered.wait()

    await delete_sandbox(sandboxes, sandbox.sandbox_id)
    runtime.release_execs()
    await asyncio.gather(working, return_exceptions=True)

    with pytest.raises(SandboxNotFound):
        await sandboxes.get(sandbox.sandbox_id)
    assert runtime.live == set()
    assert await runtime.leftover_ids() == set()
