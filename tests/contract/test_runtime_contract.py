"""What every SandboxRuntime does, written in the fake's tiny language so both can run it."""

from __future__ import annotations

import dataclasses

import pytest

from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.ids import ID_PATTERN, new_sandbox_id
from sandbox.domain.model import Language, Limits, Outcome, Program, SandboxSpec, Stream
from sandbox.domain.output import OutputCapture
from sandbox.domain.ports import SandboxRuntime
from sandbox.domain.services import execute_script

pytestmark = pytest.mark.anyio

LIMITS = Limits(timeout_s=20)


async def test_python_stdout_and_stderr_are_kept_apart(runtime: SandboxRuntime) -> None:
    source = b'import sys\nprint("to out")\nprint("to err", file=sys.stderr)\nprint("out again")\n'

    result = await execute_script(runtime, Language.PYTHON, source, LIMITS)

    assert result.stdout.text == "to out\nout again\n"
    assert result.stderr.text == "to err\n"
    assert result.outcome.exit_code == 0


async def test_bash_stdout_and_stderr_are_kept_apart(runtime: SandboxRuntime) -> None:
    source = b"echo to out\necho to err >&2\necho out again\n"

    result = await execute_script(runtime, Language.BASH, source, LIMITS)

    assert result.stdout.text == "to out\nout again\n"
    assert result.stderr.text == "to err\n"
    assert result.outcome.exit_code == 0


async def test_an_empty_script_succeeds_silently(runtime: SandboxRuntime) -> None:
    result = await execute_script(runtime, Language.PYTHON, b"", LIMITS)

    assert result.outcome.exit_code == 0
    assert (result.stdout.text, result.stderr.text) == ("", "")


async def test_text_outside_ascii_comes_back_as_written(runtime: SandboxRuntime) -> None:
    result = await execute_script(runtime, Language.PYTHON, 'print("héllo 漢字")'.encode(), LIMITS)

    assert result.stdout.text == "héllo 漢字\n"


@pytest.mark.parametrize(
    ("language", "source", "code"),
    [
        (Language.PYTHON, b'import sys\nprint("before")\nsys.exit(3)\nprint("after")\n', 3),
        (Language.BASH, b"echo before\nexit 7\necho after\n", 7),
    ],
    ids=["python", "bash"],
)
async def test_a_script_ends_at_its_exit_with_its_code(
    runtime: SandboxRuntime, language: Language, source: bytes, code: int
) -> None:
    result = await execute_script(runtime, language, source, LIMITS)

    assert result.outcome.exit_code == code
    assert result.outcome.timed_out is False
    assert result.outcome.oom_killed is False
    assert result.stdout.text == "before\n"


@pytest.mark.parametrize(
    ("language", "source"),
    [
        (Language.PYTHON, b'import time\nprint("before")\ntime.sleep(5)\nprint("after")\n'),
        (Language.BASH, b"echo before\nsleep 5\necho after\n"),
    ],
    ids=["python", "bash"],
)
async def test_a_script_past_its_timeout_is_timed_out_with_no_exit_code(
    runtime: SandboxRuntime, language: Language, source: bytes
) -> None:
    limits = dataclasses.replace(LIMITS, timeout_s=0.5)

    result = await execute_script(runtime, language, source, limits)

    assert result.outcome.timed_out is True
    assert result.outcome.exit_code is None
    assert result.outcome.duration_ms < 4500  # ended by the timer, not after the 5 s sleep
    assert result.stdout.text == "before\n"  # what it printed before the end is kept


async def test_output_past_the_cap_is_cut_and_flagged(runtime: SandboxRuntime) -> None:
    limits = dataclasses.replace(LIMITS, output_bytes=1000)
    source = b'import sys\nprint("x" * 3000)\nprint("short", file=sys.stderr)\n'

    result = await execute_script(runtime, Language.PYTHON, source, limits)

    assert result.stdout.text == "x" * 1000
    assert result.stdout.truncated is True
    assert result.stderr.text == "short\n"
    assert result.stderr.truncated is False
    assert result.outcome.exit_code == 0


async def test_the_result_has_the_documented_shape(runtime: SandboxRuntime) -> None:
    result = await execute_script(runtime, Language.BASH, b"echo shaped\n", LIMITS)

    summary, full = result.summary(), result.to_dict()

    assert ID_PATTERN.match(result.sandbox_id)
    assert summary == {
        "sandbox_id": result.sandbox_id,
        "language": "bash",
        "exit_code": 0,
        "timed_out": False,
        "oom_killed": False,
        "stdout_truncated": False,
        "stderr_truncated": False,
        "duration_ms": result.outcome.duration_ms,
    }
    assert full == {**summary, "stdout": "shaped\n", "stderr": ""}
    assert isinstance(summary["duration_ms"], int)


async def test_each_execution_gets_a_new_sandbox_id(runtime: SandboxRuntime) -> None:
    first = await execute_script(runtime, Language.BASH, b"echo one\n", LIMITS)
    second = await execute_script(runtime, Language.BASH, b"echo two\n", LIMITS)

    assert first.sandbox_id != second.sandbox_id


async def test_a_healthy_runtime_reports_no_readiness_problems(runtime: SandboxRuntime) -> None:
    assert await runtime.readiness() == []


async def test_the_identity_names_the_rootfs(runtime: SandboxRuntime) -> None:
    identity = runtime.identity

    assert isinstance(identity.get("rootfs"), str)
    assert identity["rootfs"] != ""


# Warm sandboxes: started ahead, then given one script.


async def run_warm(
    runtime: SandboxRuntime, language: Language, source: bytes, limits: Limits = LIMITS
) -> tuple[Outcome, str, str]:
    spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=limits)
    await runtime.start_warm(spec, language, ())
    try:
        capture = OutputCapture(limits.output_bytes)
        outcome = await runtime.run_warm(spec.sandbox_id, Program.script(language, source),
                                         capture, limits.timeout_s)
        await capture.close()
    finally:
        await runtime.destroy(spec.sandbox_id)
    return (outcome, capture.captured(Stream.STDOUT).text,
            capture.captured(Stream.STDERR).text)


@pytest.mark.parametrize(
    ("language", "source"),
    [
        (Language.PYTHON,
         b'import sys\nprint("out")\nprint("err", file=sys.stderr)\nsys.exit(3)\n'),
        (Language.BASH, b"echo out\necho err >&2\nexit 3\n"),
    ],
    ids=["python", "bash"],
)
async def test_a_warm_sandbox_runs_its_script_as_a_new_one_would(
    runtime: SandboxRuntime, language: Language, source: bytes
) -> None:
    cold = await execute_script(runtime, language, source, LIMITS)

    outcome, stdout, stderr = await run_warm(runtime, language, source)

    assert (outcome.exit_code, stdout, stderr) == (
        cold.outcome.exit_code, cold.stdout.text, cold.stderr.text)
    assert (outcome.exit_code, stdout, stderr) == (3, "out\n", "err\n")
    assert outcome.timed_out is False
    assert outcome.oom_killed is False


async def test_a_warm_script_past_its_timeout_is_timed_out(runtime: SandboxRuntime) -> None:
    source = b'import time\nprint("before")\ntime.sleep(5)\nprint("after")\n'

    outcome, stdout, _ = await run_warm(runtime, Language.PYTHON, source,
                                        dataclasses.replace(LIMITS, timeout_s=0.5))

    assert outcome.timed_out is True
    assert outcome.exit_code is None
    assert stdout == "before\n"


async def test_a_warm_sandbox_refuses_a_script_of_another_language(
    runtime: SandboxRuntime,
) -> None:
    spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=LIMITS)
    await runtime.start_warm(spec, Language.BASH, ())
    try:
        with pytest.raises(RuntimeFailure):
            await runtime.run_warm(spec.sandbox_id, Program.script(Language.PYTHON, b""),
                                   OutputCapture(100), 5)
    finally:
        await runtime.destroy(spec.sandbox_id)


async def test_a_destroyed_warm_sandbox_leaves_nothing_and_runs_nothing(
    runtime: SandboxRuntime,
) -> None:
    spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=LIMITS)
    await runtime.start_warm(spec, Language.PYTHON, ())

    await runtime.destroy(spec.sandbox_id)

    assert spec.sandbox_id not in await runtime.leftover_ids()
    with pytest.raises(RuntimeFailure):
        await runtime.run_warm(spec.sandbox_id, Program.script(Language.PYTHON, b""),
                               OutputCapture(100), 5)
