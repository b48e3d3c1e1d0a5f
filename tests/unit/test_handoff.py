"""Any call on any instance: a sandbox running on one instance is handed to another that a
call needing its processes reached; a suspended one restores wherever the call lands; reads
come from the shared state everywhere."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from instances_support import Instance, instances, runtime_of, serving, where_it_runs
from lifecycle_support import (
    LIMITS,
    ControlledRuntime,
    NewSandboxes,
    read_bytes,
    run_python,
    session,
    suspended_session,
    write_bytes,
)

from sandbox.adapters.fake_packages import FakePackageInstaller
from sandbox.domain.errors import InvalidState, Unavailable
from sandbox.domain.lifecycle import work
from sandbox.domain.lifecycle.creation import create_session
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.handoff import answer_pending
from sandbox.domain.lifecycle.reading import get_sandbox, list_sandboxes
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import SharedState
from sandbox.domain.lifecycle.shutdown import shut_down
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.model import Language, SandboxState
from sandbox.domain.reasons import ReasonCode

pytestmark = pytest.mark.anyio


@pytest.fixture
def instance(new_sandboxes: NewSandboxes, shared: SharedState, tmp_path: Path) -> Instance:
    return instances(new_sandboxes, shared, tmp_path)


async def test_an_exec_on_another_instance_hands_the_sandbox_over_with_its_files(
    instance: Instance,
) -> None:
    a, b = instance("a"), instance("b")
    sandbox = await session(a)
    await write_bytes(a, sandbox.sandbox_id, "/workspace/notes", b"written on a")

    async with serving(a, b):
        read_on_b = await read_bytes(b, sandbox.sandbox_id, "/workspace/notes")

    record = await get_sandbox(b, sandbox.sandbox_id)
    assert read_on_b == b"written on a"
    assert where_it_runs(sandbox.sandbox_id, a, b) == ["container on b", "lease of b"]
    assert (record.state, record.reason_code) == (SandboxState.RUNNING, ReasonCode.RESTORED)
    assert record.checkpoint is None
    assert await b.images.published() == []  # the image went once restored


async def test_reads_and_lists_are_the_same_on_every_instance(instance: Instance) -> None:
    a, b = instance("a"), instance("b")
    running, suspended = await session(a), await suspended_session(b)

    listed = [[sandbox.sandbox_id for sandbox in await list_sandboxes(each)] for each in (a, b)]
    seen = [await get_sandbox(each, running.sandbox_id) for each in (a, b)]

    assert listed[0] == listed[1] == [running.sandbox_id, suspended.sandbox_id]
    assert seen[0] == seen[1]


async def test_a_sandbox_suspended_on_one_instance_restores_on_another(
    instance: Instance,
) -> None:
    a, b = instance("a"), instance("b")
    sandbox = await session(a)
    await write_bytes(a, sandbox.sandbox_id, "/tmp/kept", b"1")
    await suspend_sandbox(a, sandbox.sandbox_id)

    restored = await restore_sandbox(b, sandbox.sandbox_id)

    assert restored.state is SandboxState.RUNNING
    assert await read_bytes(b, sandbox.sandbox_id, "/tmp/kept") == b"1"
    assert where_it_runs(sandbox.sandbox_id, a, b) == ["container on b", "lease of b"]


async def test_the_owner_lets_a_call_at_work_finish_before_it_hands_over(
    instance: Instance,
) -> None:
    a, b = instance("a"), instance("b")
    sandbox = await session(a)
    runtime_of(a).hold_execs()
    on_a = asyncio.create_task(run_python(a, sandbox.sandbox_id, 'print("on a")'))
    await runtime_of(a).exec_entered.wait()

    async with serving(a, b):
        on_b = asyncio.create_task(run_python(b, sandbox.sandbox_id, 'print("on b")'))
        await asyncio.sleep(0.3)
        still_on_a = where_it_runs(sandbox.sandbox_id, a, b)
        runtime_of(a).release_execs()
        results = await asyncio.gather(on_a, on_b)

    assert still_on_a == ["container on a", "lease of a"]
    assert [result.stdout.text for result in results] == ["on a\n", "on b\n"]
    assert where_it_runs(sandbox.sandbox_id, a, b) == ["container on b", "lease of b"]


async def test_a_call_on_the_owner_that_waited_while_it_handed_over_follows_the_sandbox(
    instance: Instance,
) -> None:
    a, b = instance("a"), instance("b")
    sandbox = await session(a)
    await b.handoffs.request(sandbox.sandbox_id, "b")  # b asked for it
    async with serving(b):
        async with a.lock(sandbox.sandbox_id):
            # The owner's handoff waits for the lock first, then a call on the owner.
            handing_over = asyncio.create_task(answer_pending(a))
            on_a = asyncio.create_task(run_python(a, sandbox.sandbox_id, 'print("on a")'))
            for _ in range(20):
                await asyncio.sleep(0)
        await handing_over
        async with serving(a):
            result = await on_a

    assert result.stdout.text == "on a\n"
    assert where_it_runs(sandbox.sandbox_id, a, b) == ["container on a", "lease of a"]


async def test_callers_on_two_instances_at_once_agree_on_one_owner_at_every_moment(
    instance: Instance,
) -> None:
    a, b, c = instance("a"), instance("b"), instance("c")
    sandbox = await session(a)
    seen: list[list[str]] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append(where_it_runs(sandbox.sandbox_id, a, b, c))
            await asyncio.sleep(0)

    async with serving(a, b, c):
        watching = asyncio.create_task(watch())
        results = await asyncio.gather(*(run_python(caller, sandbox.sandbox_id, "print('x')")
                                         for caller in (b, c, b, c)))
        done.set()
        await watching

    assert [result.outcome.exit_code for result in results] == [0, 0, 0, 0]
    assert all(sum(entry.startswith("container") for entry in moment) <= 1 for moment in seen)
    assert all(sum(entry.startswith("lease") for entry in moment) <= 1 for moment in seen)
    final = where_it_runs(sandbox.sandbox_id, a, b, c)
    assert final in (["container on b", "lease of b"], ["container on c", "lease of c"])


async def test_a_call_gets_a_503_when_the_owner_does_not_hand_over_in_time(
    instance: Instance,
) -> None:
    a, b = instance("a"), instance("b", handoff_timeout_s=0.3)
    sandbox = await session(a)

    with pytest.raises(Unavailable) as refused:  # a answers no handoff: it is not serving
        await run_python(b, sandbox.sandbox_id, "print(1)")

    assert refused.value.retry_after_s > 0
    assert "another server instance" in refused.value.message
    assert where_it_runs(sandbox.sandbox_id, a, b) == ["container on a", "lease of a"]
    async with serving(a, b):  # the request is still there: answered once a serves
        await answer_pending(a)
    assert where_it_runs(sandbox.sandbox_id, a, b) == []
    assert (await get_sandbox(b, sandbox.sandbox_id)).reason_code is ReasonCode.HANDED_OFF


async def test_a_sandbox_handed_off_is_restored_by_the_next_call_wherever_it_lands(
    instance: Instance,
) -> None:
    a, b, c = instance("a"), instance("b", handoff_timeout_s=0.3), instance("c")
    sandbox = await session(a)
    with pytest.raises(Unavailable):
        await run_python(b, sandbox.sandbox_id, "print(1)")
    async with serving(a):
        await answer_pending(a)

    result = await run_python(c, sandbox.sandbox_id, 'print("on c")')

    assert result.stdout.text == "on c\n"
    assert where_it_runs(sandbox.sandbox_id, a, b, c) == ["container on c", "lease of c"]


async def test_a_suspend_sent_to_another_instance_is_done_by_the_owner(
    instance: Instance,
) -> None:
    a, b = instance("a"), instance("b")
    sandbox = await session(a)

    async with serving(a, b):
        suspended = await suspend_sandbox(b, sandbox.sandbox_id)

    assert (suspended.state, suspended.reason_code) == (SandboxState.SUSPENDED,
                                                        ReasonCode.SUSPENDED)
    assert where_it_runs(sandbox.sandbox_id, a, b) == []
    with pytest.raises(InvalidState):  # suspended by its user: a call does not restore it
        await run_python(b, sandbox.sandbox_id, "print(1)")
    assert (await restore_sandbox(b, sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_deleting_a_sandbox_that_runs_elsewhere_ends_it_there(
    instance: Instance,
) -> None:
    a, b = instance("a"), instance("b")
    sandbox = await session(a)

    async with serving(a, b):
        await delete_sandbox(b, sandbox.sandbox_id)
        for _ in range(100):
            if not where_it_runs(sandbox.sandbox_id, a, b):
                break
            await asyncio.sleep(0.01)

    assert where_it_runs(sandbox.sandbox_id, a, b) == []
    assert await list_sandboxes(a) == []
    assert await runtime_of(a).leftover_ids() == set()


async def test_a_restore_elsewhere_mounts_the_same_package_releases_built_there(
    instance: Instance,
) -> None:
    a = instance("a")
    b_installer = FakePackageInstaller()
    b_installer.root = "/other-host/packages"
    a.installer = FakePackageInstaller()
    b = instance("b")
    b.installer = b_installer
    sandbox = await create_session(a, Language.PYTHON, LIMITS, packages=["tablib==3.5.0"])
    await suspend_sandbox(a, sandbox.sandbox_id)

    restored = await restore_sandbox(b, sandbox.sandbox_id)

    assert sandbox.package_pins == (("tablib==3.5.0",),)
    assert b_installer.installed_pins == [("tablib==3.5.0",)]
    assert restored.package_dirs == (
        f"/other-host/packages/{sandbox.package_dirs[0].rsplit('/', 1)[1]}",)
    launched = runtime_of(b).runs + [spec for spec, _ in runtime_of(b).launched]
    assert launched == []  # restored, not started anew


async def test_a_stop_saves_what_runs_and_a_waiting_call_elsewhere_restores_it_at_once(
    instance: Instance,
) -> None:
    a, b = instance("a", suspend_on_shutdown=True), instance("b")
    sandbox = await session(a)
    await write_bytes(a, sandbox.sandbox_id, "/tmp/kept", b"kept")

    async with serving(b):  # a does not answer handoffs: it is stopping
        reading = asyncio.create_task(read_bytes(b, sandbox.sandbox_id, "/tmp/kept"))
        await asyncio.sleep(0.1)
        await shut_down(a)
        kept = await reading

    assert kept == b"kept"
    assert where_it_runs(sandbox.sandbox_id, a, b) == ["container on b", "lease of b"]


async def test_a_stop_saves_the_smallest_sandboxes_first_several_at_once(
    instance: Instance,
) -> None:
    a = instance("a", suspend_on_shutdown=True, shutdown_concurrency=2)
    sizes = [256, 64, 1024, 128]
    sandboxes = [await create_session(a, Language.PYTHON, dataclasses.replace(
        LIMITS, memory_mb=size)) for size in sizes]
    runtime = runtime_of(a)
    started: list[int] = []
    at_once = [0, 0]
    checkpoint = runtime.checkpoint

    async def slow_checkpoint(sandbox_id: str) -> str:
        memory = next(s.limits.memory_mb for s in sandboxes if s.sandbox_id == sandbox_id)
        started.append(memory)
        at_once[0] += 1
        at_once[1] = max(at_once)
        await asyncio.sleep(0.05)
        at_once[0] -= 1
        return await checkpoint(sandbox_id)

    runtime.checkpoint = slow_checkpoint  # type: ignore[method-assign]

    await shut_down(a)

    assert started[:2] == [64, 128] and started[2:] == [256, 1024]
    assert at_once[1] == 2
    states = {(await get_sandbox(a, s.sandbox_id)).state for s in sandboxes}
    assert states == {SandboxState.SUSPENDED}


async def test_one_instance_alone_works_as_before(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime
) -> None:
    sandboxes = new_sandboxes()
    sandbox = await session(sandboxes)
    await write_bytes(sandboxes, sandbox.sandbox_id, "/tmp/a", b"a")
    await suspend_sandbox(sandboxes, sandbox.sandbox_id)
    await restore_sandbox(sandboxes, sandbox.sandbox_id)

    entries = await work.list_files(sandboxes, sandbox.sandbox_id, "/tmp")

    assert [entry.name for entry in entries] == ["a"]
    assert await sandboxes.handoffs.pending() == []
    assert sandboxes.ownership.holds(sandbox.sandbox_id)
