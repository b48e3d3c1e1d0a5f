"""Work in a running session: execs and file calls, and how many may be at work at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from lifecycle_support import (
    ControlledRuntime,
    NewSandboxes,
    limits,
    python,
    read_bytes,
    run_python,
    session,
    suspended_session,
    write_bytes,
)

from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import AtCapacity, InvalidState, RuntimeFailure, SandboxNotFound
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle.creation import create_session
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.work import exec_in_sandbox, list_files
from sandbox.domain.model import Language, SandboxKind, SandboxState

pytestmark = pytest.mark.anyio


async def test_a_session_idles_until_it_is_given_work(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await session(sandboxes, idle_timeout_s=60)

    result = await run_python(sandboxes, sandbox.sandbox_id, 'print("hello")')

    assert (sandbox.kind, sandbox.idle_timeout_s) == (SandboxKind.SESSION, 60)
    assert (result.outcome.exit_code, result.stdout.text) == (0, "hello\n")
    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING
    assert runtime.live == {sandbox.sandbox_id}


async def test_a_failing_exec_leaves_the_session_running(sandboxes: Sandboxes) -> None:
    sandbox = await session(sandboxes)

    result = await run_python(sandboxes, sandbox.sandbox_id, "sys.exit(5)")

    assert result.outcome.exit_code == 5
    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_files_written_in_a_session_are_there_for_later_calls(
    sandboxes: Sandboxes,
) -> None:
    sandbox = await session(sandboxes)

    await write_bytes(sandboxes, sandbox.sandbox_id, "/workspace/data.txt", b"kept")
    listed = await list_files(sandboxes, sandbox.sandbox_id, "/workspace")
    read = await read_bytes(sandboxes, sandbox.sandbox_id, "/workspace/data.txt")

    assert [(entry.name, entry.size) for entry in listed] == [("data.txt", 4)]
    assert read == b"kept"


async def test_a_session_has_no_time_limit_of_its_own(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await create_session(sandboxes, Language.PYTHON, limits(timeout_s=0.01))

    result = await exec_in_sandbox(sandboxes, sandbox.sandbox_id, python("time.sleep(0.05)"),
                                   b"", 1)

    assert result.outcome.timed_out is False
    assert (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.RUNNING
    assert runtime.live == {sandbox.sandbox_id}


# Calls at once ----------------------------------------------------------------------------

Call = Callable[[Sandboxes, str], Awaitable[object]]

CALLS: dict[str, Call] = {
    "exec": lambda boxes, sandbox_id: run_python(boxes, sandbox_id),
    "write_file": lambda boxes, sandbox_id: write_bytes(boxes, sandbox_id, "/tmp/a", b"a"),
    "read_file": lambda boxes, sandbox_id: read_bytes(boxes, sandbox_id, "/tmp/a"),
    "list_files": lambda boxes, sandbox_id: list_files(boxes, sandbox_id, "/tmp"),
}


@pytest.fixture
def capacity() -> Capacity:
    return Capacity(max_executions=1, memory_budget_mb=10_000, wait_s=0.05, max_calls=1)


@pytest.fixture
def sandboxes(new_sandboxes: NewSandboxes, capacity: Capacity) -> Sandboxes:
    return new_sandboxes(capacity=capacity)


@pytest.mark.parametrize("call", CALLS)
async def test_a_call_beyond_the_calls_at_once_waits_then_is_refused(
    sandboxes: Sandboxes, runtime: ControlledRuntime, capacity: Capacity, call: str
) -> None:
    sandbox = await session(sandboxes)
    await write_bytes(sandboxes, sandbox.sandbox_id, "/tmp/a", b"a")
    runtime.hold_execs()
    working = asyncio.create_task(run_python(sandboxes, sandbox.sandbox_id))
    await runtime.exec_entered.wait()

    with pytest.raises(AtCapacity) as refused:
        await CALLS[call](sandboxes, sandbox.sandbox_id)
    runtime.release_execs()
    await working

    assert "calls" in refused.value.message and refused.value.retry_after_s >= 1
    assert capacity.calls == 0
    await CALLS[call](sandboxes, sandbox.sandbox_id)  # the place is free again


async def test_a_call_gives_its_place_back_when_the_runtime_fails_or_the_client_leaves(
    sandboxes: Sandboxes, runtime: ControlledRuntime, capacity: Capacity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox = await session(sandboxes)
    runtime.hold_execs()
    leaving = asyncio.create_task(run_python(sandboxes, sandbox.sandbox_id))
    await runtime.exec_entered.wait()
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    runtime.release_execs()

    async def broken(*args: object) -> None:
        raise RuntimeFailure("runsc exec failed")

    monkeypatch.setattr(runtime, "write_file", broken)
    with pytest.raises(RuntimeFailure):
        await write_bytes(sandboxes, sandbox.sandbox_id, "/tmp/a", b"a")

    assert capacity.calls == 0
    assert sandboxes.busy[sandbox.sandbox_id] == 0


async def test_a_call_on_a_stopped_sandbox_is_refused_at_once_even_with_every_place_taken(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    busy = await session(sandboxes)
    stopped = await suspended_session(sandboxes)
    runtime.hold_execs()
    working = asyncio.create_task(run_python(sandboxes, busy.sandbox_id))
    await runtime.exec_entered.wait()

    with pytest.raises(InvalidState):
        await run_python(sandboxes, stopped.sandbox_id)
    with pytest.raises(SandboxNotFound):
        await run_python(sandboxes, new_sandbox_id())
    runtime.release_execs()
    await working
