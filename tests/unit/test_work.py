"""Work in a running session: execs and file calls."""

from __future__ import annotations

import pytest
from lifecycle_support import ControlledRuntime, limits, python, run_python, session

from sandbox.domain.lifecycle.creation import create_session
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.work import exec_in_sandbox, list_files, read_file, write_file
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

    await write_file(sandboxes, sandbox.sandbox_id, "/workspace/data.txt", b"kept")
    listed = await list_files(sandboxes, sandbox.sandbox_id, "/workspace")
    read = await read_file(sandboxes, sandbox.sandbox_id, "/workspace/data.txt")

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
