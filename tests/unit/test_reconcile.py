"""After a restart the service makes its records and the host agree. A restart is a second
service over the same runtime, store and output log, the first one closed."""

from __future__ import annotations

import pytest
from lifecycle_support import (
    LIMITS,
    ControlledRuntime,
    ManualClock,
    NewService,
    chunks,
    exited_script,
    session,
    suspended_session,
    whole,
)

from sandbox.adapters.memory_store import InMemoryOutputLog, InMemorySandboxStore
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle import IDLE, LifecyclePolicy, SandboxService
from sandbox.domain.model import (
    Language,
    Sandbox,
    SandboxKind,
    SandboxSpec,
    SandboxState,
    Stream,
)
from sandbox.domain.output import OutputCapture

pytestmark = pytest.mark.anyio


async def restarted(new_service: NewService, before: SandboxService) -> SandboxService:
    await before.close()
    after = new_service()
    await after.reconcile()
    return after


async def test_a_record_left_creating_becomes_failed(
    new_service: NewService, store: InMemorySandboxStore, clock: ManualClock
) -> None:
    sandbox = Sandbox(sandbox_id=new_sandbox_id(), kind=SandboxKind.SESSION,
                      state=SandboxState.CREATING, language=Language.PYTHON, limits=LIMITS,
                      created_at=clock(), updated_at=clock())
    await store.add(sandbox)

    await new_service().reconcile()

    reconciled = await store.get(sandbox.sandbox_id)
    assert reconciled is not None
    assert reconciled.state is SandboxState.FAILED
    assert "restarted" in reconciled.reason


async def test_a_detached_script_that_still_ran_is_ended_with_the_restart_as_reason(
    new_service: NewService, runtime: ControlledRuntime
) -> None:
    before = new_service()
    sandbox = await before.run_detached(Language.PYTHON, b'print("so far")\ntime.sleep(60)\n',
                                        LIMITS)

    after = await restarted(new_service, before)

    reconciled, stdout, _ = await after.read_output(sandbox.sandbox_id)
    assert (reconciled.state, reconciled.exit_code) == (SandboxState.EXITED, None)
    assert "server restarted while it ran" in reconciled.reason
    assert reconciled.running_since is None
    assert stdout.data == b"so far\n"
    assert await runtime.leftover_ids() == set()


async def test_a_session_that_still_ran_is_suspended_and_can_be_restored(
    new_service: NewService, runtime: ControlledRuntime
) -> None:
    before = new_service()
    sandbox = await session(before)
    await before.write_file(sandbox.sandbox_id, "/workspace/notes", chunks(b"kept"))

    after = await restarted(new_service, before)

    reconciled = await after.get(sandbox.sandbox_id)
    assert reconciled.state is SandboxState.SUSPENDED
    assert reconciled.reason == "suspended when the server restarted"
    assert runtime.live == set()
    await after.restore(sandbox.sandbox_id)
    assert await whole(after.read_file(sandbox.sandbox_id, "/workspace/notes")) == b"kept"


async def test_a_running_record_whose_sandbox_is_gone_is_ended_with_a_reason(
    new_service: NewService, runtime: ControlledRuntime
) -> None:
    before = new_service()
    sandbox = await session(before)
    await before.close()
    await runtime.destroy(sandbox.sandbox_id)  # the host rebooted, say

    after = await restarted(new_service, before)

    reconciled = await after.get(sandbox.sandbox_id)
    assert reconciled.state is SandboxState.EXITED
    assert reconciled.reason == "ended: it was not running when the server restarted"


async def test_a_suspended_sandbox_stays_suspended_and_can_be_restored(
    new_service: NewService, runtime: ControlledRuntime
) -> None:
    before = new_service()
    sandbox = await suspended_session(before)

    after = await restarted(new_service, before)

    assert await after.get(sandbox.sandbox_id) == sandbox
    assert (await after.restore(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_an_exited_sandbox_keeps_its_record_and_output(new_service: NewService) -> None:
    before = new_service()
    sandbox = await exited_script(before, 'print("done")')

    after = await restarted(new_service, before)

    reconciled, stdout, _ = await after.read_output(sandbox.sandbox_id)
    assert reconciled == sandbox
    assert stdout.data == b"done\n"


async def test_what_the_runtime_holds_without_a_record_is_destroyed(
    new_service: NewService, runtime: ControlledRuntime
) -> None:
    kept = await session(new_service())
    stray = SandboxSpec(sandbox_id=new_sandbox_id(), limits=LIMITS)
    checkpointed = SandboxSpec(sandbox_id=new_sandbox_id(), limits=LIMITS)
    for spec in (stray, checkpointed):
        await runtime.launch(spec, IDLE, OutputCapture(1024))
    await runtime.checkpoint(checkpointed.sandbox_id)

    await new_service().reconcile()

    assert await runtime.leftover_ids() == {kept.sandbox_id}


async def test_output_without_a_record_is_removed(
    new_service: NewService, outputs: InMemoryOutputLog
) -> None:
    kept = await exited_script(new_service(), 'print("mine")')
    await outputs.sink(new_sandbox_id(), 1024).write(Stream.STDOUT, b"nobody's\n")

    await new_service().reconcile()

    assert await outputs.ids() == {kept.sandbox_id}


async def test_reconcile_twice_changes_nothing_more(
    new_service: NewService, store: InMemorySandboxStore
) -> None:
    before = new_service()
    await session(before)
    await before.run_detached(Language.BASH, b"sleep 60\n", LIMITS)
    after = await restarted(new_service, before)
    once = await store.list()

    await after.reconcile()

    assert await store.list() == once


async def test_a_graceful_stop_suspends_what_runs_so_a_restart_can_restore_it(
    new_service: NewService, runtime: ControlledRuntime
) -> None:
    before = new_service(LifecyclePolicy(suspend_on_shutdown=True))
    sandbox = await session(before)
    await before.write_file(sandbox.sandbox_id, "/workspace/notes", chunks(b"kept"))

    await before.close()
    after = new_service()
    await after.reconcile()

    stopped = await after.get(sandbox.sandbox_id)
    assert stopped.state is SandboxState.SUSPENDED
    assert stopped.reason == "suspended when the server stopped"
    await after.restore(sandbox.sandbox_id)
    assert await whole(after.read_file(sandbox.sandbox_id, "/workspace/notes")) == b"kept"
