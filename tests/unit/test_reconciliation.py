"""After a restart the service makes its records and the host agree. A restart is a second
service over the same runtime, store and output log, the first one closed."""

from __future__ import annotations

import pytest
from lifecycle_support import (
    LIMITS,
    ControlledRuntime,
    ManualClock,
    NewSandboxes,
    exited_script,
    read_bytes,
    session,
    suspended_session,
    write_bytes,
)

from sandbox.adapters.memory_store import InMemoryOutputLog, InMemorySandboxStore
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle.creation import run_detached
from sandbox.domain.lifecycle.reading import read_output
from sandbox.domain.lifecycle.reconciliation import reconcile
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.shutdown import shut_down
from sandbox.domain.model import (
    IDLE,
    Language,
    Sandbox,
    SandboxKind,
    SandboxSpec,
    SandboxState,
    Stream,
)
from sandbox.domain.output import OutputCapture
from sandbox.domain.reasons import ReasonCode

pytestmark = pytest.mark.anyio


async def restarted(new_sandboxes: NewSandboxes, before: Sandboxes) -> Sandboxes:
    await shut_down(before)
    after = new_sandboxes()
    await reconcile(after)
    return after


async def test_a_record_left_creating_becomes_failed(
    new_sandboxes: NewSandboxes, store: InMemorySandboxStore, clock: ManualClock
) -> None:
    sandbox = Sandbox(sandbox_id=new_sandbox_id(), kind=SandboxKind.SESSION,
                      state=SandboxState.CREATING, language=Language.PYTHON, limits=LIMITS,
                      created_at=clock(), updated_at=clock())
    await store.add(sandbox)

    await reconcile(new_sandboxes())

    reconciled = await store.get(sandbox.sandbox_id)
    assert reconciled is not None
    assert reconciled.state is SandboxState.FAILED
    assert reconciled.reason_code is ReasonCode.LOST


async def test_a_detached_script_that_still_ran_is_ended_with_the_restart_as_reason(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime
) -> None:
    before = new_sandboxes()
    sandbox = await run_detached(before, Language.PYTHON, b'print("so far")\ntime.sleep(60)\n',
                                        LIMITS)

    after = await restarted(new_sandboxes, before)

    reconciled, stdout, _ = await read_output(after, sandbox.sandbox_id)
    assert (reconciled.state, reconciled.exit_code) == (SandboxState.EXITED, None)
    assert reconciled.reason_code is ReasonCode.SERVER_RESTARTED
    assert reconciled.running_since is None
    assert stdout.data == b"so far\n"
    assert await runtime.leftover_ids() == set()


async def test_a_session_that_still_ran_is_suspended_and_can_be_restored(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime
) -> None:
    before = new_sandboxes()
    sandbox = await session(before)
    await write_bytes(before, sandbox.sandbox_id, "/workspace/notes", b"kept")

    after = await restarted(new_sandboxes, before)

    reconciled = await after.get(sandbox.sandbox_id)
    assert reconciled.state is SandboxState.SUSPENDED
    assert reconciled.reason_code is ReasonCode.SERVER_RESTARTED
    assert runtime.live == set()
    await restore_sandbox(after, sandbox.sandbox_id)
    assert await read_bytes(after, sandbox.sandbox_id, "/workspace/notes") == b"kept"


async def test_a_running_record_whose_sandbox_is_gone_is_ended_with_a_reason(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime
) -> None:
    before = new_sandboxes()
    sandbox = await session(before)
    await shut_down(before)
    await runtime.destroy(sandbox.sandbox_id)  # the host rebooted, say

    after = await restarted(new_sandboxes, before)

    reconciled = await after.get(sandbox.sandbox_id)
    assert reconciled.state is SandboxState.EXITED
    assert (reconciled.reason_code, reconciled.reason) == (
        ReasonCode.LOST, "ended: the server running it stopped, and it was not saved")


async def test_a_suspended_sandbox_stays_suspended_and_can_be_restored(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime
) -> None:
    before = new_sandboxes()
    sandbox = await suspended_session(before)

    after = await restarted(new_sandboxes, before)

    assert await after.get(sandbox.sandbox_id) == sandbox
    assert (await restore_sandbox(after, sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_an_exited_sandbox_keeps_its_record_and_output(new_sandboxes: NewSandboxes) -> None:
    before = new_sandboxes()
    sandbox = await exited_script(before, 'print("done")')

    after = await restarted(new_sandboxes, before)

    reconciled, stdout, _ = await read_output(after, sandbox.sandbox_id)
    assert reconciled == sandbox
    assert stdout.data == b"done\n"


async def test_what_the_runtime_holds_without_a_record_is_destroyed(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime
) -> None:
    before = new_sandboxes()
    kept = await session(before)
    stray = SandboxSpec(sandbox_id=new_sandbox_id(), limits=LIMITS)
    checkpointed = SandboxSpec(sandbox_id=new_sandbox_id(), limits=LIMITS)
    for spec in (stray, checkpointed):
        await runtime.launch(spec, IDLE, OutputCapture(1024))
    await runtime.checkpoint(checkpointed.sandbox_id)

    after = await restarted(new_sandboxes, before)

    assert await runtime.leftover_ids() == set()
    assert (await after.get(kept.sandbox_id)).state is SandboxState.SUSPENDED


async def test_output_without_a_record_is_removed(
    new_sandboxes: NewSandboxes, outputs: InMemoryOutputLog
) -> None:
    kept = await exited_script(new_sandboxes(), 'print("mine")')
    await outputs.sink(new_sandbox_id(), 1024).write(Stream.STDOUT, b"nobody's\n")

    await reconcile(new_sandboxes())

    assert await outputs.ids() == {kept.sandbox_id}


async def test_reconcile_twice_changes_nothing_more(
    new_sandboxes: NewSandboxes, store: InMemorySandboxStore
) -> None:
    before = new_sandboxes()
    await session(before)
    await run_detached(before, Language.BASH, b"sleep 60\n", LIMITS)
    after = await restarted(new_sandboxes, before)
    once = await store.list()

    await reconcile(after)

    assert await store.list() == once


async def test_a_session_whose_suspend_on_restart_ends_it_stays_failed_with_that_reason(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = new_sandboxes()
    sandbox = await session(before)
    await shut_down(before)

    async def fail_and_end(sandbox_id: str) -> str:
        await runtime.destroy(sandbox_id)
        raise RuntimeFailure("runsc checkpoint failed: no space left on device")

    monkeypatch.setattr(runtime, "checkpoint", fail_and_end)
    after = new_sandboxes()
    await reconcile(after)

    reconciled = await after.get(sandbox.sandbox_id)
    assert reconciled.state is SandboxState.FAILED
    assert reconciled.reason_code is ReasonCode.SUSPEND_FAILED
    assert await runtime.leftover_ids() == set()
