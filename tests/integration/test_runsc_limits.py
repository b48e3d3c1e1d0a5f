"""Every limit holds against a script that tries to break it, and the host is fine after."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle.execution import run_script
from sandbox.domain.model import IDLE, Language, Limits, Program, SandboxSpec
from sandbox.domain.output import OutputCapture

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]

# Generous upper bounds that only catch a hang; runs take a fraction of these.
HANG_MS = 15_000
MIB = 1024 * 1024

# gVisor answers a write to the host pipe with a short count once the pipe is full, and
# Python under PYTHONUNBUFFERED=1 (set in oci.py) drops the rest of a short write
# (CPython issue #86210): one print of more than 64 KiB loses all but the first 64 KiB.
async def test_an_infinite_loop_is_ended_at_the_timeout(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = b'print("looping", flush=True)\nwhile True:\n    pass\n'

    result = await run_script(
        runtime, Language.PYTHON, source, dataclasses.replace(limits, timeout_s=1)
    )

    assert result.outcome.timed_out is True
    assert result.outcome.exit_code is None
    assert 1000 <= result.outcome.duration_ms < HANG_MS
    assert result.stdout.text == "looping\n"


async def test_a_script_ignoring_sigterm_is_still_ended_at_the_timeout(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = b"trap '' TERM\necho armed\nsleep 1000\n"

    result = await run_script(
        runtime, Language.BASH, source, dataclasses.replace(limits, timeout_s=1)
    )

    assert result.outcome.timed_out is True
    assert result.outcome.exit_code is None
    assert 1000 <= result.outcome.duration_ms < HANG_MS
    assert result.stdout.text == "armed\n"


MEMORY_BOMB = b"blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))\n"


async def test_a_memory_bomb_is_reported_as_out_of_memory(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = MEMORY_BOMB

    result = await run_script(
        runtime, Language.PYTHON, source, dataclasses.replace(limits, memory_mb=128)
    )

    assert result.outcome.oom_killed is True
    assert result.outcome.timed_out is False
    assert result.outcome.exit_code not in (None, 0)


async def test_a_script_within_its_memory_is_not_reported_as_out_of_memory(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = b"block = bytearray(32 * 1024 * 1024)\nraise SystemExit(3)\n"

    result = await run_script(
        runtime, Language.PYTHON, source, dataclasses.replace(limits, memory_mb=128)
    )

    assert result.outcome.exit_code == 3
    assert result.outcome.oom_killed is False


NEAR_THE_LIMIT_THEN_EXIT_1 = b"""
block = bytearray({mib} * 1024 * 1024)
for page in range(0, len(block), 4096):
    block[page] = 1
print("allocated", flush=True)
raise SystemExit(1)
"""


@pytest.mark.parametrize("mib", [105, 110])
async def test_a_script_that_exits_by_itself_near_its_memory_limit_is_not_out_of_memory(
    runtime: RunscSandboxRuntime, limits: Limits, mib: int
) -> None:
    """The cgroup's peak usage reaches the limit here (gVisor's own memory counts too), but
    the script printed and exited with its own status: no out-of-memory verdict."""
    source = NEAR_THE_LIMIT_THEN_EXIT_1.replace(b"{mib}", str(mib).encode())

    result = await run_script(
        runtime, Language.PYTHON, source, dataclasses.replace(limits, memory_mb=128)
    )

    assert result.stdout.text == "allocated\n"
    assert result.outcome.exit_code == 1
    assert result.outcome.oom_killed is False


async def test_a_script_killed_for_passing_its_memory_limit_says_so_and_printed_nothing_after(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = NEAR_THE_LIMIT_THEN_EXIT_1.replace(b"{mib}", b"200")

    result = await run_script(
        runtime, Language.PYTHON, source, dataclasses.replace(limits, memory_mb=128)
    )

    assert result.stdout.text == ""
    assert result.outcome.oom_killed is True
    assert result.outcome.exit_code == 137


async def test_a_child_killed_for_memory_ends_the_whole_sandbox_with_the_verdict(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    """The kernel kills the sandbox as a whole (its sentry), never one process of it: the
    script cannot go on to exit by itself, so its status is never taken for a normal one."""
    source = (
        b"python3 -c 'b = []\nwhile True: b.append(bytearray(16 << 20))'\n"
        b"echo after $?\n"
        b"exit 3\n"
    )

    result = await run_script(
        runtime, Language.BASH, source, dataclasses.replace(limits, memory_mb=128)
    )

    assert result.stdout.text == ""
    assert (result.outcome.exit_code, result.outcome.oom_killed) == (137, True)


async def test_an_exec_past_the_memory_limit_ends_its_session_out_of_memory(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    sandbox_id = new_sandbox_id()
    spec = SandboxSpec(sandbox_id=sandbox_id, limits=dataclasses.replace(limits, memory_mb=128))
    bomb = Program.script(Language.PYTHON, MEMORY_BOMB)
    await runtime.launch(spec, IDLE, OutputCapture(MIB))
    try:
        executed = await runtime.exec(sandbox_id, bomb, OutputCapture(MIB), b"", 20)
        async with asyncio.timeout(HANG_MS / 1000):
            ended = await runtime.wait(sandbox_id)
    finally:
        await runtime.destroy(sandbox_id)

    assert (executed.exit_code, executed.oom_killed) == (137, True)
    assert (ended.exit_code, ended.oom_killed) == (137, True)


async def test_an_output_flood_is_capped_per_stream_and_the_script_finishes(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    flood = "head -c {size} /dev/zero | tr '\\0' {char}"
    source = "\n".join([
        flood.format(size=16 * MIB, char="o"),
        flood.format(size=16 * MIB, char="e") + " >&2",
        "echo done",
    ]).encode()

    result = await run_script(runtime, Language.BASH, source, limits)

    assert result.outcome.exit_code == 0
    assert result.outcome.duration_ms < HANG_MS
    assert result.stdout.truncated is True
    assert result.stderr.truncated is True
    assert result.stdout.text == "o" * limits.output_bytes
    assert result.stderr.text == "e" * limits.output_bytes


async def test_a_5_mb_line_without_newline_is_capped(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = b"import sys\nsys.stdout.write('y' * 5_000_000)\n"

    result = await run_script(runtime, Language.PYTHON, source, limits)

    assert result.outcome.exit_code == 0
    assert result.stdout.truncated is True
    assert result.stdout.text == "y" * limits.output_bytes


async def test_a_5_mb_line_without_newline_arrives_whole_under_a_larger_cap(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = b"import sys\nsys.stdout.write('y' * 5_000_000)\n"

    result = await run_script(
        runtime, Language.PYTHON, source, dataclasses.replace(limits, output_bytes=8 * MIB)
    )

    assert result.outcome.exit_code == 0
    assert result.stdout.truncated is False
    assert len(result.stdout.text) == 5_000_000


async def test_a_background_daemon_does_not_keep_the_execution_alive(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    # The daemon holds the sandbox's stdout; the sandbox ends with its init all the same.
    source = b"(sleep 1000 &)\nnohup sleep 1000 >/dev/null 2>&1 &\necho started\n"

    result = await run_script(runtime, Language.BASH, source, limits)

    assert result.outcome.exit_code == 0
    assert result.outcome.timed_out is False
    assert result.stdout.text == "started\n"
    assert result.outcome.duration_ms < HANG_MS


FORKER = """
import errno, os, time
children = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
except OSError as error:
    print(errno.errorcode[error.errno], children)
"""


async def test_forking_stops_at_the_process_limit(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    result = await run_script(
        runtime, Language.PYTHON, FORKER.encode(), dataclasses.replace(limits, pids=64)
    )

    # The script itself is one of the 64 processes its user may have.
    assert result.stdout.text == "EAGAIN 63\n"
    assert result.outcome.exit_code == 0


async def test_a_fork_bomb_ends_and_the_next_sandbox_runs(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    bomb = b"bomb() { bomb | bomb & }\nbomb\nsleep 2\n"

    bombed = await run_script(
        runtime, Language.BASH, bomb, dataclasses.replace(limits, pids=64, timeout_s=10)
    )
    after = await run_script(runtime, Language.BASH, b"echo fine", limits)

    assert "Resource temporarily unavailable" in bombed.stderr.text
    assert bombed.outcome.duration_ms < HANG_MS
    assert after.stdout.text == "fine\n"
    assert after.outcome.exit_code == 0


async def test_opening_files_stops_at_the_open_files_limit(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = (
        b"import errno\n"
        b"files = []\n"
        b"try:\n"
        b"    while True:\n"
        b"        files.append(open('/dev/null'))\n"
        b"except OSError as error:\n"
        b"    print(errno.errorcode[error.errno], len(files))\n"
    )

    result = await run_script(
        runtime, Language.PYTHON, source, dataclasses.replace(limits, open_files=64)
    )

    code, opened = result.stdout.text.split()
    assert code == "EMFILE"
    # stdin, stdout, stderr and the interpreter's own files count against the limit.
    assert 50 <= int(opened) < 64
