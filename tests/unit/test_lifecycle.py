"""Detached scripts and sessions: creating them, working in them, their output, their ids,
and the cap on how many run at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from lifecycle_support import (
    LIMITS,
    ControlledRuntime,
    NewService,
    chunks,
    exited_script,
    python,
    session,
    settled,
    suspended_session,
    whole,
)

from sandbox.adapters.memory_store import InMemoryOutputLog, InMemorySandboxStore
from sandbox.domain.errors import AtCapacity, SandboxNotFound
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle import LifecyclePolicy, SandboxService
from sandbox.domain.model import Language, Limits, Sandbox, SandboxKind, SandboxState

pytestmark = pytest.mark.anyio


async def test_a_detached_script_runs_on_and_its_record_says_how_it_ended(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    started = await service.run_detached(Language.PYTHON, b'print("hi")\nsys.exit(3)\n', LIMITS)

    ended = await settled(service, started.sandbox_id)

    assert (started.kind, started.state) == (SandboxKind.SCRIPT, SandboxState.RUNNING)
    assert (ended.state, ended.exit_code, ended.reason) == (
        SandboxState.EXITED, 3, "exited with code 3"
    )
    assert runtime.live == set()


async def test_the_output_of_a_detached_script_is_kept_after_it_ended(
    service: SandboxService,
) -> None:
    sandbox = await exited_script(service, 'print("out")\nprint("err", file=sys.stderr)')

    record, stdout, stderr = await service.read_output(sandbox.sandbox_id)

    assert record.state is SandboxState.EXITED
    assert (stdout.data, stderr.data) == (b"out\n", b"err\n")
    assert not (stdout.truncated or stderr.truncated)


async def test_the_output_of_a_detached_script_is_capped_per_stream(
    service: SandboxService,
) -> None:
    limits = Limits(timeout_s=30, output_bytes=4)
    sandbox = await service.run_detached(Language.PYTHON, b'print("abcdef")\n', limits)
    await settled(service, sandbox.sandbox_id)

    _, stdout, stderr = await service.read_output(sandbox.sandbox_id)

    assert (stdout.data, stdout.truncated) == (b"abcd", True)
    assert (stderr.data, stderr.truncated) == (b"", False)


async def test_following_the_output_yields_start_then_the_output_then_the_exit(
    service: SandboxService,
) -> None:
    source = b'print("one")\ntime.sleep(0.05)\nprint("two")\nsys.exit(4)\n'
    sandbox = await service.run_detached(Language.PYTHON, source, LIMITS)

    events = [event async for event in service.follow_output(sandbox.sandbox_id, poll_s=0.01)]

    first, *middle, last = events
    assert first == {"type": "start", "sandbox_id": sandbox.sandbox_id}
    assert {event["type"] for event in middle} == {"stdout"}
    assert "".join(str(event["data"]) for event in middle) == "one\ntwo\n"
    assert (last["type"], last["state"], last["exit_code"]) == ("exit", "exited", 4)


async def test_following_the_output_of_a_sandbox_deleted_meanwhile_ends_with_deleted(
    service: SandboxService,
) -> None:
    sandbox = await session(service)
    follower = service.follow_output(sandbox.sandbox_id, poll_s=0.01)
    await anext(follower)

    await service.delete(sandbox.sandbox_id)
    events = [event async for event in follower]

    assert events == [{"type": "deleted", "sandbox_id": sandbox.sandbox_id}]


async def test_a_session_idles_until_it_is_given_work(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await session(service, idle_timeout_s=60)

    result = await service.exec(sandbox.sandbox_id, python('print("hello")'), b"", None)

    assert (sandbox.kind, sandbox.idle_timeout_s) == (SandboxKind.SESSION, 60)
    assert (result.outcome.exit_code, result.stdout.text) == (0, "hello\n")
    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING
    assert runtime.live == {sandbox.sandbox_id}


async def test_a_failing_exec_leaves_the_session_running(service: SandboxService) -> None:
    sandbox = await session(service)

    result = await service.exec(sandbox.sandbox_id, python("sys.exit(5)"), b"", None)

    assert result.outcome.exit_code == 5
    assert (await service.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_files_written_in_a_session_are_there_for_later_calls(
    service: SandboxService,
) -> None:
    sandbox = await session(service)

    await service.write_file(sandbox.sandbox_id, "/workspace/data.txt", chunks(b"kept"))
    listed = await service.list_files(sandbox.sandbox_id, "/workspace")
    read = await whole(service.read_file(sandbox.sandbox_id, "/workspace/data.txt"))

    assert [(entry.name, entry.size) for entry in listed] == [("data.txt", 4)]
    assert read == b"kept"


async def test_files_of_a_session_survive_a_suspend_and_restore(service: SandboxService) -> None:
    sandbox = await session(service)
    await service.write_file(sandbox.sandbox_id, "/workspace/data.txt", chunks(b"kept"))

    await service.suspend(sandbox.sandbox_id)
    restored = await service.restore(sandbox.sandbox_id)

    assert (restored.state, restored.reason) == (SandboxState.RUNNING, "restored")
    assert await whole(service.read_file(sandbox.sandbox_id, "/workspace/data.txt")) == b"kept"


async def test_delete_removes_the_record_the_output_and_everything_on_the_host(
    service: SandboxService, runtime: ControlledRuntime, outputs: InMemoryOutputLog
) -> None:
    sandbox = await exited_script(service, 'print("out")')

    await service.delete(sandbox.sandbox_id)

    with pytest.raises(SandboxNotFound):
        await service.get(sandbox.sandbox_id)
    assert await service.list_sandboxes() == []
    assert await outputs.ids() == set()
    assert await runtime.leftover_ids() == set()


async def test_deleting_a_suspended_session_removes_its_checkpoint(
    service: SandboxService, runtime: ControlledRuntime
) -> None:
    sandbox = await suspended_session(service)

    await service.delete(sandbox.sandbox_id)

    assert await runtime.leftover_ids() == set()


async def test_the_list_filters_by_state(service: SandboxService) -> None:
    running = await session(service)
    suspended = await suspended_session(service)

    everything = await service.list_sandboxes()
    only_suspended = await service.list_sandboxes(SandboxState.SUSPENDED)

    assert {sandbox.sandbox_id for sandbox in everything} == {
        running.sandbox_id, suspended.sandbox_id
    }
    assert [sandbox.sandbox_id for sandbox in only_suspended] == [suspended.sandbox_id]


Call = Callable[[SandboxService, str], Awaitable[object]]

CALLS: dict[str, Call] = {
    "get": lambda service, sandbox_id: service.get(sandbox_id),
    "read_output": lambda service, sandbox_id: service.read_output(sandbox_id),
    "exec": lambda service, sandbox_id: service.exec(sandbox_id, python(""), b"", None),
    "write_file": lambda service, sandbox_id: service.write_file(sandbox_id, "/tmp/a", chunks(b"")),
    "read_file": lambda service, sandbox_id: whole(service.read_file(sandbox_id, "/tmp/a")),
    "list_files": lambda service, sandbox_id: service.list_files(sandbox_id, "/tmp"),
    "suspend": lambda service, sandbox_id: service.suspend(sandbox_id),
    "restore": lambda service, sandbox_id: service.restore(sandbox_id),
    "delete": lambda service, sandbox_id: service.delete(sandbox_id),
}

MALFORMED_IDS = ["", "idle1", "../../etc", "0" * 23, "0" * 25, "A" * 24, "0" * 23 + "\n"]


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("sandbox_id", MALFORMED_IDS)
async def test_a_malformed_id_names_no_sandbox(
    service: SandboxService, call: str, sandbox_id: str
) -> None:
    await session(service)

    with pytest.raises(SandboxNotFound):
        await CALLS[call](service, sandbox_id)


@pytest.mark.parametrize("call", CALLS)
async def test_an_unknown_well_formed_id_names_no_sandbox(
    service: SandboxService, call: str
) -> None:
    with pytest.raises(SandboxNotFound, match="no sandbox with id"):
        await CALLS[call](service, new_sandbox_id())


async def test_following_the_output_of_an_unknown_sandbox_fails_at_once(
    service: SandboxService,
) -> None:
    with pytest.raises(SandboxNotFound):
        await anext(service.follow_output(new_sandbox_id()))


# Capacity ---------------------------------------------------------------------------------


async def test_a_create_beyond_the_running_limit_is_refused(new_service: NewService) -> None:
    service = new_service(LifecyclePolicy(max_running=1))
    await session(service)

    with pytest.raises(AtCapacity) as refused:
        await session(service)
    with pytest.raises(AtCapacity):
        await service.run_detached(Language.BASH, b"echo hi\n", LIMITS)

    assert refused.value.retry_after_s > 0
    assert len(await service.list_sandboxes()) == 1


async def test_suspended_sandboxes_do_not_count_towards_the_running_limit(
    new_service: NewService,
) -> None:
    service = new_service(LifecyclePolicy(max_running=1))
    await suspended_session(service)

    created = await session(service)

    assert created.state is SandboxState.RUNNING


async def test_a_restore_beyond_the_running_limit_is_refused_and_stays_suspended(
    new_service: NewService,
) -> None:
    service = new_service(LifecyclePolicy(max_running=1))
    suspended = await suspended_session(service)
    await session(service)

    with pytest.raises(AtCapacity):
        await service.restore(suspended.sandbox_id)

    assert (await service.get(suspended.sandbox_id)).state is SandboxState.SUSPENDED


class StoreOnDisk(InMemorySandboxStore):
    """Yields to other tasks on every call, as a store that waits for its disk does."""

    async def add(self, sandbox: Sandbox) -> None:
        await asyncio.sleep(0)
        await super().add(sandbox)

    async def list(self, state: SandboxState | None = None) -> list[Sandbox]:
        await asyncio.sleep(0)
        return await super().list(state)


async def test_concurrent_creates_never_run_more_sandboxes_than_the_limit(
    new_service: NewService, runtime: ControlledRuntime
) -> None:
    service = new_service(LifecyclePolicy(max_running=2), StoreOnDisk())

    attempts = await asyncio.gather(*(session(service) for _ in range(4)),
                                    return_exceptions=True)

    created = [attempt for attempt in attempts if isinstance(attempt, Sandbox)]
    refused = [attempt for attempt in attempts if isinstance(attempt, AtCapacity)]
    assert (len(created), len(refused)) == (2, 2)
    assert len(runtime.live) == 2


async def test_a_script_ends_and_so_makes_room_under_the_running_limit(
    new_service: NewService,
) -> None:
    service = new_service(LifecyclePolicy(max_running=1))
    await exited_script(service, "sys.exit(0)")

    created = await session(service)

    assert created.state is SandboxState.RUNNING

