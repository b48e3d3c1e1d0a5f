"""Python execs in a session are forked from an interpreter started ahead (the zygote); what a
script sees and what it leaves must be what a freshly started `python3 SCRIPT` gives.

Each script runs twice in one session: forked (no exec environment of its own) and started
(an exec environment forces a plain start); the results are compared field by field, with
the exec's own script path (random per exec) masked."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator

import pytest

from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.model import IDLE, Language, Program, SandboxSpec, Stream
from sandbox.domain.output import OutputCapture
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]

MIB = 1024 * 1024
SCRIPT_PATH = re.compile(r"/sandbox/input/exec-[0-9a-f]{16}-main\.py")
FORCE_START = (("SANDBOX_TEST_START", "1"),)

SCRIPTS = {
    "output in order": (
        "import sys\nprint('out 1')\nprint('err', file=sys.stderr)\nprint('out 2')\n"
    ),
    "exit code": "import sys\nprint('bye')\nsys.exit(7)\n",
    "exit with a message": "import sys\nsys.exit('no luck')\n",
    "exit with none": "raise SystemExit(None)\n",
    "uncaught exception": "def f():\n    raise ValueError('bad value')\nf()\n",
    "syntax error": "print('never'\n",
    "keyboard interrupt": "raise KeyboardInterrupt\n",
    "main and argv": (
        "import sys, os\nprint(__name__, __file__ == sys.argv[0], len(sys.argv))\n"
        "print(sys.path[0], os.getcwd(), __spec__, __package__)\n"
        "print(sorted(k for k in globals() if not k.startswith('__builtins')))\n"
    ),
    "atexit and threads": (
        "import atexit, threading, time\natexit.register(lambda: print('at exit'))\n"
        "t = threading.Thread(target=lambda: (time.sleep(0.2), print('thread done')))\n"
        "t.start()\nprint('main done')\n"
    ),
    "stdin": "import sys\nprint(repr(sys.stdin.read()))\n",
    "environment": (
        "import os\nprint(os.environ.get('HOME'), os.environ.get('SANDBOX_ZYGOTE_FD'))\n"
    ),
    "signals": (
        "import signal\nprint(signal.getsignal(signal.SIGINT) is signal.default_int_handler,"
        " signal.getsignal(signal.SIGCHLD), signal.getsignal(signal.SIGTERM))\n"
    ),
    "identity": (
        "import os\nprint(os.getuid(), os.getgid(), os.getgroups(), os.getpgrp() == os.getpid())\n"
    ),
}


@pytest.fixture
async def session_id(runtime: RunscSandboxRuntime) -> AsyncIterator[str]:
    sandbox_id = new_sandbox_id()
    limits = dataclasses.replace(Settings().default_limits(), timeout_s=20)
    await runtime.launch(SandboxSpec(sandbox_id=sandbox_id, limits=limits), IDLE,
                         OutputCapture(MIB))
    try:
        yield sandbox_id
    finally:
        await runtime.destroy(sandbox_id)


async def run(
    runtime: RunscSandboxRuntime, sandbox_id: str, source: str,
    env: tuple[tuple[str, str], ...] = (), stdin: bytes = b"",
) -> tuple[int | None, str, str]:
    capture = OutputCapture(MIB)
    program = Program(language=Language.PYTHON, source=source.encode(), env=env)
    outcome = await runtime.exec(sandbox_id, program, capture, stdin, 20)
    await capture.close()
    masked = [SCRIPT_PATH.sub("SCRIPT", capture.captured(stream).text) for stream in Stream]
    return outcome.exit_code, masked[0], masked[1]


@pytest.mark.parametrize("name", list(SCRIPTS))
async def test_a_forked_exec_gives_what_a_started_python_gives(
    runtime: RunscSandboxRuntime, session_id: str, name: str
) -> None:
    stdin = b"some input\n" if name == "stdin" else b""

    forked = await run(runtime, session_id, SCRIPTS[name], stdin=stdin)
    started = await run(runtime, session_id, SCRIPTS[name], FORCE_START, stdin)

    assert forked == started


async def test_generators_differ_between_forked_execs(
    runtime: RunscSandboxRuntime, session_id: str
) -> None:
    source = "import random, uuid\nprint(random.random(), uuid.uuid4())\n"

    first = await run(runtime, session_id, source)
    second = await run(runtime, session_id, source)

    assert first[0] == second[0] == 0
    assert first[1] != second[1]


async def test_execs_still_run_after_the_zygote_is_killed_from_inside(
    runtime: RunscSandboxRuntime, session_id: str
) -> None:
    # A forked exec's parent is the zygote (its command line is the zygote's, too).
    killer = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('killed')\n"

    killed = await run(runtime, session_id, killer)
    after = [await run(runtime, session_id, "print('still here')\n") for _ in range(3)]

    assert killed == (0, "killed\n", "")
    assert after == [(0, "still here\n", "")] * 3
