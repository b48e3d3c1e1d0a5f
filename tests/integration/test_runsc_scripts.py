"""Scripts run in real gVisor and come back exactly as they ran."""

from __future__ import annotations

import pytest

from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.lifecycle.execution import run_script
from sandbox.domain.model import Language, Limits

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]


async def test_python_hello_world_prints_and_exits_zero(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    result = await run_script(runtime, Language.PYTHON, b'print("hello, world")', limits)

    assert result.stdout.text == "hello, world\n"
    assert result.stderr.text == ""
    assert result.outcome.exit_code == 0
    assert result.language == "python"


async def test_bash_hello_world_prints_and_exits_zero(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    result = await run_script(runtime, Language.BASH, b"echo hello from bash", limits)

    assert result.stdout.text == "hello from bash\n"
    assert result.stderr.text == ""
    assert result.outcome.exit_code == 0
    assert result.language == "bash"


async def test_a_failing_script_returns_its_traceback_and_exit_code(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = b'print("before")\nraise ValueError("broken on purpose")\n'

    result = await run_script(runtime, Language.PYTHON, source, limits)

    assert result.outcome.exit_code == 1
    assert result.outcome.timed_out is False
    assert result.outcome.oom_killed is False
    assert result.stdout.text == "before\n"
    assert result.stderr.text.startswith("Traceback (most recent call last):\n")
    assert result.stderr.text.endswith("ValueError: broken on purpose\n")


async def test_a_script_exit_code_comes_back_as_is(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    result = await run_script(runtime, Language.BASH, b"echo oops >&2\nexit 42\n", limits)

    assert result.outcome.exit_code == 42
    assert result.stdout.text == ""
    assert result.stderr.text == "oops\n"


async def test_stdin_is_empty(runtime: RunscSandboxRuntime, limits: Limits) -> None:
    source = b"import sys\nprint(repr(sys.stdin.read()))\n"

    result = await run_script(runtime, Language.PYTHON, source, limits)

    assert result.stdout.text == "''\n"
    assert result.outcome.exit_code == 0


async def test_multibyte_utf8_comes_back_exactly(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    text = "café 漢字 🎉 ñ"
    source = f'import sys\nprint("{text}")\nprint("{text}", file=sys.stderr)\n'.encode()

    result = await run_script(runtime, Language.PYTHON, source, limits)

    assert result.stdout.text == f"{text}\n"
    assert result.stderr.text == f"{text}\n"


async def test_binary_output_is_decoded_with_replacement_characters(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = b"import sys\nsys.stdout.buffer.write(bytes(range(256)))\n"

    result = await run_script(runtime, Language.PYTHON, source, limits)

    assert result.outcome.exit_code == 0
    assert result.stdout.text == bytes(range(256)).decode("utf-8", errors="replace")
    assert result.stdout.text.endswith("\ufffd" * 128)
    assert result.stdout.truncated is False


async def test_a_script_exiting_128_is_not_mistaken_for_a_runsc_failure(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    result = await run_script(runtime, Language.BASH, b"exit 128", limits)

    assert result.outcome.exit_code == 128
