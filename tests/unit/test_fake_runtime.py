"""The fake runtime: its tiny languages, programmed behaviours and timeouts."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from lifecycle_support import limits

from sandbox.adapters.fake import FakeBehaviour, FakeSandboxRuntime
from sandbox.domain.model import (
    ExecutionResult,
    Language,
    Limits,
    Outcome,
    Program,
    SandboxSpec,
    Stream,
)
from sandbox.domain.output import OutputCapture

pytestmark = pytest.mark.anyio

SANDBOX = "0123456789abcdef01234567"
LIMITS = limits(timeout_s=5)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def run(
    runtime: FakeSandboxRuntime, language: Language, source: bytes, limits: Limits = LIMITS
) -> ExecutionResult:
    capture = OutputCapture(limits.output_bytes)
    outcome = await runtime.run(
        SandboxSpec(sandbox_id=SANDBOX, limits=limits), Program.script(language, source), capture
    )
    await capture.close()
    return ExecutionResult(SANDBOX, language.value, outcome,
                           capture.captured(Stream.STDOUT), capture.captured(Stream.STDERR))


async def test_python_prints_go_to_their_streams() -> None:
    source = (
        b"import sys\n"
        b"# a comment\n"
        b'print("hello")\n'
        b"print('ab' * 3)\n"
        b'print("oops", file=sys.stderr)\n'
    )

    result = await run(FakeSandboxRuntime(), Language.PYTHON, source)

    assert result.stdout.text == "hello\nababab\n"
    assert result.stderr.text == "oops\n"
    assert result.outcome.exit_code == 0


async def test_bash_echoes_go_to_their_streams() -> None:
    source = b"echo hello world\necho 'quoted text'\necho oops >&2\n"

    result = await run(FakeSandboxRuntime(), Language.BASH, source)

    assert result.stdout.text == "hello world\nquoted text\n"
    assert result.stderr.text == "oops\n"


@pytest.mark.parametrize(
    ("language", "source"),
    [
        (Language.PYTHON, b'print("kept")\nsys.exit(9)\nprint("never")\n'),
        (Language.PYTHON, b'print("kept")\nexit(9)\nprint("never")\n'),
        (Language.BASH, b"echo kept\nexit 9\necho never\n"),
    ],
    ids=["sys.exit", "exit", "bash"],
)
async def test_an_exit_ends_the_script_with_its_code(language: Language, source: bytes) -> None:
    result = await run(FakeSandboxRuntime(), language, source)

    assert result.outcome.exit_code == 9
    assert result.stdout.text == "kept\n"


async def test_an_unsupported_line_ends_with_exit_2_and_says_which_line() -> None:
    source = b'print("before")\nimport os\nos.system("rm -rf /")\nprint("after")\n'

    result = await run(FakeSandboxRuntime(), Language.PYTHON, source)

    assert result.outcome.exit_code == 2
    assert result.stdout.text == "before\n"
    assert result.stderr.text == 'fake runtime cannot run: os.system("rm -rf /")\n'


async def test_a_sleep_past_the_timeout_is_timed_out_with_no_exit_code() -> None:
    limits = dataclasses.replace(LIMITS, timeout_s=0.2)

    result = await run(FakeSandboxRuntime(), Language.BASH, b"echo a\nsleep 30\necho b\n", limits)

    assert result.outcome == Outcome(
        exit_code=None, timed_out=True, duration_ms=result.outcome.duration_ms
    )
    assert result.outcome.duration_ms < 5000  # a bound against hangs, not a timing claim
    assert result.stdout.text == "a\n"


async def test_a_sleep_within_the_timeout_finishes() -> None:
    source = b'import time\ntime.sleep(0.05)\nprint("woke")\n'

    result = await run(FakeSandboxRuntime(), Language.PYTHON, source)

    assert result.outcome.exit_code == 0
    assert result.outcome.timed_out is False
    assert result.stdout.text == "woke\n"


async def test_a_programmed_script_gives_its_programmed_behaviour() -> None:
    runtime = FakeSandboxRuntime()
    runtime.program(b"anything at all", FakeBehaviour(stdout=b"out", stderr=b"err", exit_code=5))

    result = await run(runtime, Language.PYTHON, b"anything at all")

    assert (result.stdout.text, result.stderr.text) == ("out", "err")
    assert result.outcome.exit_code == 5


async def test_a_programmed_out_of_memory_is_reported() -> None:
    runtime = FakeSandboxRuntime()
    runtime.program(b"bomb", FakeBehaviour(oom_killed=True, exit_code=137))

    result = await run(runtime, Language.PYTHON, b"bomb")

    assert result.outcome.oom_killed is True
    assert result.outcome.timed_out is False


async def test_a_programmed_sleep_past_the_timeout_is_timed_out() -> None:
    runtime = FakeSandboxRuntime()
    runtime.program(b"slow", FakeBehaviour(stdout=b"partial", sleep_s=30))

    result = await run(runtime, Language.BASH, b"slow", dataclasses.replace(LIMITS, timeout_s=0.1))

    assert result.outcome.timed_out is True
    assert result.outcome.exit_code is None
    assert result.stdout.text == "partial"


async def test_only_the_programmed_source_is_affected() -> None:
    runtime = FakeSandboxRuntime()
    runtime.program(b"echo one", FakeBehaviour(stdout=b"programmed"))

    result = await run(runtime, Language.BASH, b"echo two")

    assert result.stdout.text == "two\n"


async def test_runs_are_recorded_and_nothing_stays_live() -> None:
    runtime = FakeSandboxRuntime()

    await run(runtime, Language.BASH, b"echo hi")

    [(spec, program)] = runtime.runs
    assert spec.sandbox_id == SANDBOX
    assert program == Program.script(Language.BASH, b"echo hi")
    assert runtime.live == set()


async def test_a_sandbox_is_live_while_its_script_runs() -> None:
    runtime = FakeSandboxRuntime()
    running = asyncio.create_task(run(runtime, Language.BASH, b"sleep 0.3"))
    await asyncio.sleep(0.1)

    live_while_running = set(runtime.live)
    await running

    assert live_while_running == {SANDBOX}
    assert runtime.live == set()


async def test_a_cancelled_run_leaves_nothing_live() -> None:
    runtime = FakeSandboxRuntime()
    running = asyncio.create_task(run(runtime, Language.BASH, b"sleep 30"))
    await asyncio.sleep(0.05)

    running.cancel()

    with pytest.raises(asyncio.CancelledError):
        await running
    assert runtime.live == set()


async def test_readiness_reports_the_problems_it_is_given() -> None:
    runtime = FakeSandboxRuntime()
    healthy = await runtime.readiness()
    runtime.problems.append("rootfs missing")

    broken = await runtime.readiness()

    assert healthy == []
    assert broken == ["rootfs missing"]


def test_the_identity_names_the_fake_runtime_and_rootfs() -> None:
    assert FakeSandboxRuntime().identity == {"runtime": "fake", "version": "0", "rootfs": "fake"}
