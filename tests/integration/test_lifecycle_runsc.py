"""Sandboxes that live: detached scripts and sessions on real gVisor, suspended to disk and
restored, across a restart of the service too."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from integration.support import (
    leftovers,
    managed_sandboxes,
    processes_mentioning,
    read_bytes,
    started_runtime,
    write_bytes,
)
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.errors import (
    CheckpointMismatch,
    FileNotFoundInSandbox,
    InvalidRequest,
    PayloadTooLarge,
    RuntimeFailure,
    SandboxNotFound,
)
from sandbox.domain.lifecycle.creation import create_session, run_detached
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.reading import read_output
from sandbox.domain.lifecycle.reconciliation import reconcile
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.lifecycle.work import exec_in_sandbox, list_files
from sandbox.domain.model import FileEntry, Language, Program, SandboxState
from sandbox.domain.reasons import ReasonCode
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]

LIMITS = dataclasses.replace(Settings().default_limits(), timeout_s=120)
EXEC_TIMEOUT_S = 30.0
COUNTER = b"""\
import time
n = 0
while True:
    print(n, flush=True)
    n += 1
    time.sleep(0.1)
"""
# Counts into a file, for a session whose background process must outlive its exec.
FILE_COUNTER = b"""\
import time
n = 0
while True:
    with open("/tmp/count.txt", "a") as out:
        out.write(f"{n}\\n")
    n += 1
    time.sleep(0.1)
"""

# Counts the processes running a command line (arguments joined by spaces) in a sandbox.
COUNT_PROCESSES = """\
command="$(cat) "
for cmdline in /proc/[0-9]*/cmdline; do { tr '\\0' ' ' < "$cmdline"; echo; } 2>/dev/null; done \\
    | grep -c -x -F "$command" || true
"""


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 30.0) -> None:
    """Poll until check() holds; a bound against hangs, not a timing claim."""
    async with asyncio.timeout(within_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


async def counted(sandboxes: Sandboxes, sandbox_id: str, offset: int = 0) -> list[int]:
    _, stdout, _ = await read_output(sandboxes, sandbox_id)
    return [int(word) for word in stdout.data[offset:].split()]


async def counted_past(sandboxes: Sandboxes, sandbox_id: str, number: int) -> list[int]:
    async def past() -> bool:
        return len(await counted(sandboxes, sandbox_id)) > number

    await eventually(past)
    return await counted(sandboxes, sandbox_id)


async def bash(sandboxes: Sandboxes, sandbox_id: str, source: str, stdin: bytes = b"") -> str:
    program = Program.script(Language.BASH, source.encode())
    result = await exec_in_sandbox(sandboxes, sandbox_id, program, stdin, EXEC_TIMEOUT_S)
    assert (result.outcome.exit_code, result.stderr.text) == (0, ""), result
    return result.stdout.text


async def processes_running(sandboxes: Sandboxes, sandbox_id: str, command: str) -> int:
    return int(await bash(sandboxes, sandbox_id, COUNT_PROCESSES, stdin=command.encode()))


async def file_lines(sandboxes: Sandboxes, sandbox_id: str, path: str) -> list[str]:
    return (await read_bytes(sandboxes, sandbox_id, path)).decode().splitlines()


async def start_file_counter(sandboxes: Sandboxes, sandbox_id: str) -> None:
    await write_bytes(sandboxes, sandbox_id, "/workspace/count.py", FILE_COUNTER)
    await bash(sandboxes, sandbox_id, "nohup python3 /workspace/count.py >/dev/null 2>&1 &\n")

    async def counting() -> bool:
        try:
            return len(await file_lines(sandboxes, sandbox_id, "/tmp/count.txt")) >= 3
        except FileNotFoundInSandbox:
            return False  # not started yet

    await eventually(counting)


def is_kept(settings: Settings, folder: str, sandbox_id: str) -> bool:
    return (settings.state_dir / folder / sandbox_id).exists()


# Detached scripts -------------------------------------------------------------------------


async def test_a_suspended_counter_leaves_no_process_and_restored_continues_where_it_stopped(
    sandboxes: Sandboxes, settings: Settings
) -> None:
    sandbox = await run_detached(sandboxes, Language.PYTHON, COUNTER, LIMITS)
    sandbox_id = sandbox.sandbox_id
    first = await counted_past(sandboxes, sandbox_id, 3)
    grown = await counted_past(sandboxes, sandbox_id, len(first))
    processes_while_running = processes_mentioning(sandbox_id)

    suspended = await suspend_sandbox(sandboxes, sandbox_id)
    _, at_suspend, _ = await read_output(sandboxes, sandbox_id)
    last_before = int(at_suspend.data.split()[-1])
    processes_while_suspended = processes_mentioning(sandbox_id)

    assert grown[: len(first)] == first
    assert processes_while_running != []
    assert suspended.state is SandboxState.SUSPENDED
    assert processes_while_suspended == []
    assert suspended.checkpoint is not None
    assert stat.S_IMODE(os.stat(settings.checkpoints / suspended.checkpoint).st_mode) == 0o700

    restored = await restore_sandbox(sandboxes, sandbox_id)
    await counted_past(sandboxes, sandbox_id, last_before + 5)
    after_restore = await counted(sandboxes, sandbox_id, offset=at_suspend.size)
    everything = await counted(sandboxes, sandbox_id)
    await delete_sandbox(sandboxes, sandbox_id)

    assert restored.state is SandboxState.RUNNING
    assert after_restore[0] == last_before + 1
    assert everything == list(range(len(everything)))


async def test_deleting_a_suspended_sandbox_removes_its_record_output_checkpoint_and_bundle(
    sandboxes: Sandboxes, settings: Settings
) -> None:
    sandbox = await run_detached(sandboxes, Language.PYTHON, COUNTER, LIMITS)
    await counted_past(sandboxes, sandbox.sandbox_id, 1)
    suspended = await suspend_sandbox(sandboxes, sandbox.sandbox_id)
    assert suspended.checkpoint is not None
    kept = [is_kept(settings, "outputs", sandbox.sandbox_id),
            is_kept(settings, "checkpoints", suspended.checkpoint),
            is_kept(settings, "bundles", sandbox.sandbox_id)]

    await delete_sandbox(sandboxes, sandbox.sandbox_id)

    assert suspended.state is SandboxState.SUSPENDED
    assert kept == [True, True, True]
    with pytest.raises(SandboxNotFound):
        await sandboxes.get(sandbox.sandbox_id)
    assert leftovers(settings) == []


async def test_detached_output_is_capped_at_its_limit_and_flagged_truncated(
    sandboxes: Sandboxes,
) -> None:
    limits = dataclasses.replace(LIMITS, output_bytes=1000)
    source = b"import sys\nsys.stdout.write('0123456789' * 500)\n"
    sandbox = await run_detached(sandboxes, Language.PYTHON, source, limits)

    async def exited() -> bool:
        return (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.EXITED

    await eventually(exited)
    record, stdout, stderr = await read_output(sandboxes, sandbox.sandbox_id)
    await delete_sandbox(sandboxes, sandbox.sandbox_id)

    assert record.exit_code == 0
    assert stdout.data == b"0123456789" * 100
    assert (stdout.size, stdout.truncated) == (1000, True)
    assert (stderr.data, stderr.truncated) == (b"", False)


async def test_a_detached_script_past_its_time_limit_exits_with_that_reason(
    sandboxes: Sandboxes,
) -> None:
    limits = dataclasses.replace(LIMITS, timeout_s=1)
    sandbox = await run_detached(sandboxes, Language.BASH, b"echo started\nsleep 600\n", limits)

    async def ended() -> bool:
        return (await sandboxes.get(sandbox.sandbox_id)).state is not SandboxState.RUNNING

    await eventually(ended)
    record, stdout, _ = await read_output(sandboxes, sandbox.sandbox_id)
    processes = processes_mentioning(sandbox.sandbox_id)
    await delete_sandbox(sandboxes, sandbox.sandbox_id)

    assert record.state is SandboxState.EXITED
    assert (record.exit_code, record.reason) == (None, "timed out after 1 s")
    assert stdout.data == b"started\n"
    assert processes == []


# Sessions ---------------------------------------------------------------------------------


async def test_files_written_by_one_exec_are_read_by_the_next_in_another_language(
    sandboxes: Sandboxes,
) -> None:
    session = await create_session(sandboxes, Language.PYTHON, LIMITS)
    write = Program.script(Language.PYTHON, b"open('note.txt', 'w').write('from python')\n")

    written = await exec_in_sandbox(sandboxes, session.sandbox_id, write, b"", EXEC_TIMEOUT_S)
    read_back = await bash(sandboxes, session.sandbox_id, "cat /workspace/note.txt\n")
    await delete_sandbox(sandboxes, session.sandbox_id)

    assert written.outcome.exit_code == 0
    assert read_back == "from python"


async def test_binary_files_round_trip_and_are_listed(sandboxes: Sandboxes) -> None:
    session = await create_session(sandboxes, Language.PYTHON, LIMITS)
    data = bytes(range(256)) * 300 + b"\x00\xff\r\n"

    await write_bytes(sandboxes, session.sandbox_id, "/workspace/nested/blob.bin", data)
    read = await read_bytes(sandboxes, session.sandbox_id, "/workspace/nested/blob.bin")
    listed = await list_files(sandboxes, session.sandbox_id, "/workspace/nested")
    await delete_sandbox(sandboxes, session.sandbox_id)

    assert read == data
    assert [(entry.name, entry.kind, entry.size) for entry in listed] == [
        ("blob.bin", "file", len(data))]
    assert all(isinstance(entry, FileEntry) for entry in listed)


@pytest.mark.parametrize(("call", "path", "error", "words"), [
    ("read", "/workspace/missing.txt", FileNotFoundInSandbox, "no such file"),
    ("read", "/workspace", InvalidRequest, "is a directory"),
    ("read", "/etc/shadow", InvalidRequest, "may not access"),
    ("read", "/workspace/big.bin", PayloadTooLarge, "larger than"),
    ("write", "/etc/passwd", InvalidRequest, "may not access"),
    ("write", "/workspace/big.bin/inside", InvalidRequest, "not a directory"),
    ("list", "/workspace/missing", FileNotFoundInSandbox, "no such file"),
])
async def test_a_file_call_that_cannot_be_done_says_why(
    settings: Settings, runtime: RunscSandboxRuntime,
    call: str, path: str, error: type[Exception], words: str,
) -> None:
    policy = dataclasses.replace(settings.lifecycle_policy(), max_file_bytes=1024)
    async with managed_sandboxes(runtime, settings, policy) as sandboxes:
        session = await create_session(sandboxes, Language.PYTHON, LIMITS)
        await write_bytes(sandboxes, session.sandbox_id, "/workspace/big.bin", b"x" * 2048)

        async def attempt() -> object:
            if call == "read":
                return await read_bytes(sandboxes, session.sandbox_id, path)
            if call == "write":
                await write_bytes(sandboxes, session.sandbox_id, path, b"data")
                return None
            return await list_files(sandboxes, session.sandbox_id, path)

        try:
            with pytest.raises(error, match=words):
                await attempt()
        finally:
            await delete_sandbox(sandboxes, session.sandbox_id)


async def test_exec_feeds_its_stdin_to_the_program(sandboxes: Sandboxes) -> None:
    session = await create_session(sandboxes, Language.PYTHON, LIMITS)
    program = Program.script(Language.PYTHON, b"import sys\nprint(sys.stdin.read()[::-1])\n")

    result = await exec_in_sandbox(sandboxes, session.sandbox_id, program, b"stressed",
                                   EXEC_TIMEOUT_S)
    await delete_sandbox(sandboxes, session.sandbox_id)

    assert (result.outcome.exit_code, result.stdout.text) == (0, "desserts\n")


async def test_an_exec_past_its_timeout_is_killed_and_the_session_answers_the_next(
    sandboxes: Sandboxes,
) -> None:
    session = await create_session(sandboxes, Language.PYTHON, LIMITS)
    slow = Program.script(
        Language.PYTHON,
        b"import os, time\nopen('/tmp/slow.pid', 'w').write(str(os.getpid()))\ntime.sleep(600)\n",
    )

    result = await exec_in_sandbox(sandboxes, session.sandbox_id, slow, b"", 1)
    pid = (await read_bytes(sandboxes, session.sandbox_id, "/tmp/slow.pid")).decode()
    answer = await bash(sandboxes, session.sandbox_id,
                        f"echo alive; if test -e /proc/{pid}; then echo slow-lives; fi\n")
    record = await sandboxes.get(session.sandbox_id)
    await delete_sandbox(sandboxes, session.sandbox_id)

    assert (result.outcome.timed_out, result.outcome.exit_code) == (True, None)
    assert answer == "alive\n"
    assert record.state is SandboxState.RUNNING


async def test_a_background_process_does_not_hold_up_the_exec_that_started_it(
    sandboxes: Sandboxes,
) -> None:
    session = await create_session(sandboxes, Language.PYTHON, LIMITS)
    # The background sleep inherits the exec's stdout and stderr and keeps them open.
    starter = Program.script(Language.BASH, b"sleep 600 &\necho started\n")

    result = await exec_in_sandbox(sandboxes, session.sandbox_id, starter, b"", EXEC_TIMEOUT_S)
    still_there = await processes_running(sandboxes, session.sandbox_id, "sleep 600")
    await delete_sandbox(sandboxes, session.sandbox_id)

    assert (result.outcome.timed_out, result.outcome.exit_code) == (False, 0)
    assert result.stdout.text == "started\n"
    assert still_there == 1


async def test_a_session_reaps_what_its_execs_leave_behind_and_can_always_fork(
    sandboxes: Sandboxes,
) -> None:
    # Orphans that outlive their exec become the init's children; were they never reaped,
    # their zombies would count against the process limit until no fork succeeds.
    session = await create_session(sandboxes, Language.PYTHON, dataclasses.replace(LIMITS, pids=32))

    async def orphans_ended() -> bool:
        return await processes_running(sandboxes, session.sandbox_id, "sleep 0.2") == 0

    for _round in range(3):
        await bash(sandboxes, session.sandbox_id, "for i in $(seq 12); do (sleep 0.2 &); done\n")
        await eventually(orphans_ended)
    answer = await bash(sandboxes, session.sandbox_id, "echo forked | cat\n")
    await delete_sandbox(sandboxes, session.sandbox_id)

    assert answer == "forked\n"


async def test_a_restored_session_keeps_its_files_in_workspace_and_tmp(
    sandboxes: Sandboxes,
) -> None:
    session = await create_session(sandboxes, Language.PYTHON, LIMITS)
    await bash(sandboxes, session.sandbox_id,
               "echo work > /workspace/work.txt; echo scratch > /tmp/t.txt\n")

    suspended = await suspend_sandbox(sandboxes, session.sandbox_id)
    restored = await restore_sandbox(sandboxes, session.sandbox_id)
    kept = await bash(sandboxes, session.sandbox_id, "cat /workspace/work.txt /tmp/t.txt\n")
    await delete_sandbox(sandboxes, session.sandbox_id)

    assert (suspended.state, restored.state) == (SandboxState.SUSPENDED, SandboxState.RUNNING)
    assert kept == "work\nscratch\n"


async def test_a_background_process_started_in_a_session_counts_on_after_a_restore(
    sandboxes: Sandboxes,
) -> None:
    session = await create_session(sandboxes, Language.PYTHON, LIMITS)
    sandbox_id = session.sandbox_id
    await start_file_counter(sandboxes, sandbox_id)
    before = await file_lines(sandboxes, sandbox_id, "/tmp/count.txt")

    await suspend_sandbox(sandboxes, sandbox_id)
    await restore_sandbox(sandboxes, sandbox_id)

    async def counted_on() -> bool:
        return len(await file_lines(sandboxes, sandbox_id, "/tmp/count.txt")) > len(before) + 5

    try:
        await eventually(counted_on, within_s=3)
        lines = await file_lines(sandboxes, sandbox_id, "/tmp/count.txt")
    finally:
        await delete_sandbox(sandboxes, sandbox_id)

    assert lines == [str(n) for n in range(len(lines))]


# Restarts of the service ------------------------------------------------------------------


async def test_counters_suspended_by_request_and_by_a_graceful_stop_continue_after_it(
    runtime: RunscSandboxRuntime, settings: Settings
) -> None:
    async with managed_sandboxes(runtime, settings) as before:
        by_request = await run_detached(before, Language.PYTHON, COUNTER, LIMITS)
        by_stop = await run_detached(before, Language.PYTHON, COUNTER, LIMITS)
        await counted_past(before, by_request.sandbox_id, 3)
        await suspend_sandbox(before, by_request.sandbox_id)
    await runtime.close()
    ids = [by_request.sandbox_id, by_stop.sandbox_id]

    async with started_runtime(settings) as restarted, \
            managed_sandboxes(restarted, settings) as after:
        await reconcile(after)
        reconciled = [await after.get(sandbox_id) for sandbox_id in ids]
        last = [(await counted(after, sandbox_id))[-1] for sandbox_id in ids]
        restored = [await restore_sandbox(after, sandbox_id) for sandbox_id in ids]
        numbers = [await counted_past(after, sandbox_id, number + 5)
                   for sandbox_id, number in zip(ids, last, strict=True)]
        for sandbox_id in ids:
            await delete_sandbox(after, sandbox_id)

    assert [(sandbox.state, sandbox.reason) for sandbox in reconciled] == [
        (SandboxState.SUSPENDED, "suspended on request"),
        (SandboxState.SUSPENDED, "suspended when the server stopped"),
    ]
    assert [sandbox.state for sandbox in restored] == [SandboxState.RUNNING] * 2
    assert [sequence == list(range(len(sequence))) for sequence in numbers] == [True, True]


async def test_after_a_crash_reconcile_ends_running_scripts_and_suspends_running_sessions(
    runtime: RunscSandboxRuntime, settings: Settings
) -> None:
    # A crash: the service goes without suspending anything, and the readers of the pipes go
    # with it; its sandboxes run on (a script that printed now would die of the closed pipe).
    crashing = dataclasses.replace(settings.lifecycle_policy(), suspend_on_shutdown=False)
    async with managed_sandboxes(runtime, settings, crashing) as before:
        script = await run_detached(before, Language.BASH, b"echo started\nsleep 600\n", LIMITS)
        session = await create_session(before, Language.PYTHON, LIMITS)
        await bash(before, session.sandbox_id, "echo kept > /workspace/kept.txt\n")

        async def started() -> bool:
            return (await read_output(before, script.sandbox_id))[1].data == b"started\n"

        await eventually(started)
    await runtime.close()
    running_across = processes_mentioning(script.sandbox_id)

    async with started_runtime(settings) as restarted, \
            managed_sandboxes(restarted, settings) as after:
        await reconcile(after)
        ended = await after.get(script.sandbox_id)
        script_processes = processes_mentioning(script.sandbox_id)
        suspended = await after.get(session.sandbox_id)
        await restore_sandbox(after, session.sandbox_id)
        kept = await bash(after, session.sandbox_id, "cat /workspace/kept.txt\n")
        _, output, _ = await read_output(after, script.sandbox_id)
        for sandbox in (script, session):
            await delete_sandbox(after, sandbox.sandbox_id)

    assert running_across != []
    assert ended.state is SandboxState.EXITED
    assert ended.reason_code is ReasonCode.SERVER_RESTARTED
    assert script_processes == []
    assert output.data == b"started\n"
    assert suspended.state is SandboxState.SUSPENDED
    assert suspended.reason_code is ReasonCode.SERVER_RESTARTED
    assert kept == "kept\n"


# Checkpoints that cannot be restored ------------------------------------------------------


async def test_a_checkpoint_made_with_another_rootfs_is_refused_and_kept(
    sandboxes: Sandboxes, settings: Settings, tmp_path: Path
) -> None:
    sandbox = await run_detached(sandboxes, Language.PYTHON, COUNTER, LIMITS)
    await counted_past(sandboxes, sandbox.sandbox_id, 1)
    await suspend_sandbox(sandboxes, sandbox.sandbox_id)
    other = tmp_path / "other"
    other.mkdir()
    (other / "rootfs").symlink_to(settings.rootfs_dir, target_is_directory=True)
    (other / "rootfs.identity").write_text("another-rootfs\n")
    elsewhere = dataclasses.replace(settings, rootfs_dir=other / "rootfs")

    async with started_runtime(elsewhere, clean_up=False) as other_runtime, \
            managed_sandboxes(other_runtime, settings) as other_sandboxes:
        with pytest.raises(CheckpointMismatch, match="another-rootfs"):
            await restore_sandbox(other_sandboxes, sandbox.sandbox_id)
    record = await sandboxes.get(sandbox.sandbox_id)
    image_kept = (settings.checkpoints / str(record.checkpoint) / "checkpoint.img").is_file()
    restored_here = await restore_sandbox(sandboxes, sandbox.sandbox_id)
    await delete_sandbox(sandboxes, sandbox.sandbox_id)

    assert record.state is SandboxState.SUSPENDED
    assert image_kept
    assert restored_here.state is SandboxState.RUNNING


async def test_a_corrupt_checkpoint_fails_the_restore_and_leaves_nothing_on_the_host(
    sandboxes: Sandboxes, settings: Settings
) -> None:
    sandbox = await run_detached(sandboxes, Language.PYTHON, COUNTER, LIMITS)
    await counted_past(sandboxes, sandbox.sandbox_id, 1)
    suspended = await suspend_sandbox(sandboxes, sandbox.sandbox_id)
    assert suspended.checkpoint is not None
    image = settings.checkpoints / suspended.checkpoint / "checkpoint.img"
    os.truncate(image, image.stat().st_size // 2)

    with pytest.raises(RuntimeFailure):
        await restore_sandbox(sandboxes, sandbox.sandbox_id)
    record = await sandboxes.get(sandbox.sandbox_id)
    left = leftovers(settings)
    await delete_sandbox(sandboxes, sandbox.sandbox_id)

    assert record.state is SandboxState.FAILED
    assert record.reason_code is ReasonCode.RESTORE_FAILED
    assert "runsc" not in record.reason and "/" not in record.reason
    assert left == [f"record {sandbox.sandbox_id}", f"outputs/{sandbox.sandbox_id}"]
    assert processes_mentioning(sandbox.sandbox_id) == []

