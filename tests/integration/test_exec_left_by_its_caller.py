"""An exec whose caller goes away (its HTTP client left) at any moment, even while the agent
is still starting it, ends with its process group and leaves the session working."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.model import IDLE, Language, Program, SandboxSpec, Stream
from sandbox.domain.output import OutputCapture
from sandbox.settings import Settings

TWENTY_SECONDS = dataclasses.replace(Settings().default_limits(), timeout_s=20)

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]

MIB = 1024 * 1024
PROGRAMS = {
    "started": Program(language=None, argv=("sleep", "60")),
    "forked": Program.script(Language.PYTHON,
                             b"import subprocess\nsubprocess.run(['sleep', '60'])\n"),
}
# The rootfs has no pgrep.
COUNT_SLEEPS = ("import os\n"
                "print(sum(open(f'/proc/{pid}/cmdline', 'rb').read().startswith(b'sleep')\n"
                "          for pid in os.listdir('/proc') if pid.isdigit()))")


@pytest.fixture
async def session_id(runtime: RunscSandboxRuntime) -> AsyncIterator[str]:
    sandbox_id = new_sandbox_id()
    await runtime.launch(SandboxSpec(sandbox_id=sandbox_id, limits=TWENTY_SECONDS), IDLE,
                         OutputCapture(MIB))
    try:
        yield sandbox_id
    finally:
        await runtime.destroy(sandbox_id)


async def run(runtime: RunscSandboxRuntime, sandbox_id: str, *argv: str) -> tuple[int | None, str]:
    capture = OutputCapture(MIB)
    outcome = await runtime.exec(sandbox_id, Program(language=None, argv=argv), capture, b"", 20)
    await capture.close()
    return outcome.exit_code, capture.captured(Stream.STDOUT).text


@pytest.mark.parametrize("program", list(PROGRAMS))
@pytest.mark.parametrize("turns", [1, 2, 3, 5, 8])
async def test_an_exec_cancelled_while_it_starts_ends_and_the_session_goes_on(
    runtime: RunscSandboxRuntime, session_id: str, program: str, turns: int
) -> None:
    execution = asyncio.create_task(
        runtime.exec(session_id, PROGRAMS[program], OutputCapture(MIB), b"", 20))
    for _ in range(turns):  # the cancel lands before, during or after the agent's answer
        await asyncio.sleep(0)

    execution.cancel()
    await asyncio.wait({execution})
    after = await run(runtime, session_id, "echo", "after")
    sleeping = await run(runtime, session_id, "python3", "-c", COUNT_SLEEPS)

    assert after == (0, "after\n")
    assert sleeping == (0, "0\n")
