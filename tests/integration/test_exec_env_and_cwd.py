"""An exec's own environment and working folder, in a real gVisor session."""

from __future__ import annotations

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


@pytest.fixture
async def session_id(runtime: RunscSandboxRuntime) -> AsyncIterator[str]:
    sandbox_id = new_sandbox_id()
    spec = SandboxSpec(sandbox_id=sandbox_id, limits=TWENTY_SECONDS,
                       env=(("COLOUR", "blue"),))
    await runtime.launch(spec, IDLE, OutputCapture(MIB))
    try:
        yield sandbox_id
    finally:
        await runtime.destroy(sandbox_id)


async def run(
    runtime: RunscSandboxRuntime, sandbox_id: str, program: Program
) -> tuple[int | None, str, str]:
    capture = OutputCapture(MIB)
    outcome = await runtime.exec(sandbox_id, program, capture, b"", 20)
    await capture.close()
    return outcome.exit_code, *(capture.captured(stream).text for stream in Stream)


async def test_an_exec_variable_wins_over_the_sessions_for_every_reader(
    runtime: RunscSandboxRuntime, session_id: str
) -> None:
    env = (("COLOUR", "red"), ("SIZE", "L"))

    printed = await run(runtime, session_id,
                        Program(language=None, argv=("printenv", "COLOUR", "SIZE"), env=env))
    python = await run(runtime, session_id, Program.script(
        Language.PYTHON, b"import os\nprint(os.environ['COLOUR'], os.environ['SIZE'])\n"))
    python_with_env = await run(runtime, session_id, Program(
        language=Language.PYTHON, source=b"import os\nprint(os.environ['COLOUR'])\n", env=env))

    # printenv prints every entry of a name: a name given twice would show twice.
    assert printed == (0, "red\nL\n", "")
    assert python[0] == 1 and "KeyError: 'SIZE'" in python[2]
    assert python_with_env == (0, "red\n", "")


@pytest.mark.parametrize("language", [None, Language.PYTHON, Language.BASH])
async def test_an_exec_runs_in_the_folder_it_names(
    runtime: RunscSandboxRuntime, session_id: str, language: Language | None
) -> None:
    source = {None: b"", Language.PYTHON: b"import os\nprint(os.getcwd())\n",
              Language.BASH: b"pwd\n"}[language]
    argv = ("pwd",) if language is None else ()

    there = await run(runtime, session_id,
                      Program(language=language, source=source, argv=argv, cwd="/tmp"))
    default = await run(runtime, session_id,
                        Program(language=language, source=source, argv=argv))

    assert there == (0, "/tmp\n", "")
    assert default == (0, "/workspace\n", "")


async def test_an_exec_in_a_missing_folder_says_so_and_ends_127(
    runtime: RunscSandboxRuntime, session_id: str
) -> None:
    program = Program(language=Language.PYTHON, source=b"print('never')\n", cwd="/nowhere")

    exit_code, stdout, stderr = await run(runtime, session_id, program)

    assert (exit_code, stdout) == (127, "")
    assert "/nowhere" in stderr
