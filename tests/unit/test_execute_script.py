"""The execute-a-script use case, on the fake runtime."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import structlog
from structlog.typing import EventDict

from sandbox.adapters.fake import FakeBehaviour, FakeSandboxRuntime
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.ids import ID_PATTERN
from sandbox.domain.model import Language, Limits, Outcome, Program, SandboxSpec, Stream
from sandbox.domain.ports import OutputSink
from sandbox.domain.services import ExecutionEvents, execute_script

pytestmark = pytest.mark.anyio

LIMITS = Limits(timeout_s=5, memory_mb=64, output_bytes=1000)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    """Log entries with the context bound through contextvars."""
    previous = structlog.get_config()
    structlog.reset_defaults()
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    structlog.contextvars.clear_contextvars()
    yield capture.entries
    structlog.contextvars.clear_contextvars()
    structlog.configure(**previous)


class RecordedEvents(ExecutionEvents):
    def __init__(self, runtime: FakeSandboxRuntime) -> None:
        self.runtime = runtime
        self.heard: list[tuple[str, ...]] = []

    async def started(self, sandbox_id: str) -> None:
        self.heard.append(("started", sandbox_id, f"runs so far: {len(self.runtime.runs)}"))

    async def output(self, stream: Stream, text: str) -> None:
        self.heard.append((stream.value, text))


async def test_the_result_carries_output_outcome_and_language() -> None:
    runtime = FakeSandboxRuntime()
    source = b'import sys\nprint("out")\nprint("err", file=sys.stderr)\nsys.exit(3)\n'

    result = await execute_script(runtime, Language.PYTHON, source, LIMITS)

    assert ID_PATTERN.match(result.sandbox_id)
    assert result.language == "python"
    assert result.outcome.exit_code == 3
    assert result.to_dict() == {
        "sandbox_id": result.sandbox_id,
        "language": "python",
        "exit_code": 3,
        "timed_out": False,
        "oom_killed": False,
        "stdout_truncated": False,
        "stderr_truncated": False,
        "duration_ms": result.outcome.duration_ms,
        "stdout": "out\n",
        "stderr": "err\n",
    }


async def test_the_runtime_gets_a_fresh_sandbox_with_the_limits_and_the_script() -> None:
    runtime = FakeSandboxRuntime()

    result = await execute_script(runtime, Language.BASH, b"echo hi", LIMITS)

    assert runtime.runs == [
        (SandboxSpec(sandbox_id=result.sandbox_id, limits=LIMITS),
         Program.script(Language.BASH, b"echo hi")),
    ]


async def test_events_hear_the_start_before_the_run_then_the_output_in_order() -> None:
    runtime = FakeSandboxRuntime()
    events = RecordedEvents(runtime)
    source = b"echo one\necho two >&2\necho three\n"

    result = await execute_script(runtime, Language.BASH, source, LIMITS, events)

    assert events.heard == [
        ("started", result.sandbox_id, "runs so far: 0"),
        ("stdout", "one\n"),
        ("stderr", "two\n"),
        ("stdout", "three\n"),
    ]


async def test_events_hear_only_the_output_within_the_cap() -> None:
    runtime = FakeSandboxRuntime()
    events = RecordedEvents(runtime)

    result = await execute_script(
        runtime, Language.PYTHON, b'print("x" * 3000)', LIMITS, events
    )

    heard = "".join(event[1] for event in events.heard if event[0] == "stdout")
    assert heard == "x" * 1000
    assert result.stdout.text == heard
    assert result.stdout.truncated is True


async def test_a_timed_out_script_is_a_result_not_an_error() -> None:
    limits = dataclasses.replace(LIMITS, timeout_s=0.1)

    result = await execute_script(FakeSandboxRuntime(), Language.BASH, b"sleep 10", limits)

    assert result.outcome.timed_out is True
    assert result.outcome.exit_code is None


async def test_an_out_of_memory_verdict_comes_from_the_runtime() -> None:
    runtime = FakeSandboxRuntime()
    runtime.program(b"grow()", FakeBehaviour(oom_killed=True, exit_code=137))

    result = await execute_script(runtime, Language.PYTHON, b"grow()", LIMITS)

    assert result.summary()["oom_killed"] is True


async def test_the_sandbox_id_is_bound_to_every_log_line_of_the_execution(
    logs: list[EventDict],
) -> None:
    result = await execute_script(FakeSandboxRuntime(), Language.BASH, b"echo hi", LIMITS)

    events = [(entry["event"], entry.get("sandbox_id")) for entry in logs]
    assert events == [
        ("execution.started", result.sandbox_id),
        ("execution.finished", result.sandbox_id),
    ]


class BrokenRuntime(FakeSandboxRuntime):
    async def run(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> Outcome:
        raise RuntimeFailure("runsc failed: no rootfs")


async def test_a_runtime_failure_is_raised_not_turned_into_a_result() -> None:
    with pytest.raises(RuntimeFailure, match="no rootfs"):
        await execute_script(BrokenRuntime(), Language.BASH, b"echo hi", LIMITS)


async def test_each_execution_gets_its_own_sandbox_id() -> None:
    runtime = FakeSandboxRuntime()

    ids = {(await execute_script(runtime, Language.BASH, b"echo hi", LIMITS)).sandbox_id
           for _ in range(5)}

    assert len(ids) == 5
