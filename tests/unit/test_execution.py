"""Executing a script in a fresh sandbox, on the fake runtime."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import structlog
from lifecycle_support import LIMITS as SESSION
from lifecycle_support import ControlledRuntime, NewSandboxes, limits, session
from structlog.typing import EventDict

from sandbox.adapters.fake import FakeBehaviour, FakeSandboxRuntime
from sandbox.adapters.fake_packages import FakePackageInstaller
from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import (
    AtCapacity,
    InvalidRequest,
    PackageResolutionFailed,
    RuntimeFailure,
)
from sandbox.domain.ids import ID_PATTERN
from sandbox.domain.lifecycle.execution import execute_script, run_script
from sandbox.domain.metrics import ExecutionKind, NoMetrics, Verdict
from sandbox.domain.model import Language, Outcome, Program, SandboxSpec, Stream
from sandbox.domain.output import ExecutionEvents
from sandbox.domain.ports import OutputSink

pytestmark = pytest.mark.anyio


LIMITS = limits(timeout_s=5, memory_mb=64, output_bytes=1000)


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

    result = await run_script(runtime, Language.PYTHON, source, LIMITS)

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

    result = await run_script(runtime, Language.BASH, b"echo hi", LIMITS)

    assert runtime.runs == [
        (SandboxSpec(sandbox_id=result.sandbox_id, limits=LIMITS),
         Program.script(Language.BASH, b"echo hi")),
    ]


async def test_events_hear_the_start_before_the_run_then_the_output_in_order() -> None:
    runtime = FakeSandboxRuntime()
    events = RecordedEvents(runtime)
    source = b"echo one\necho two >&2\necho three\n"

    result = await run_script(runtime, Language.BASH, source, LIMITS, events)

    assert events.heard == [
        ("started", result.sandbox_id, "runs so far: 0"),
        ("stdout", "one\n"),
        ("stderr", "two\n"),
        ("stdout", "three\n"),
    ]


async def test_events_hear_only_the_output_within_the_cap() -> None:
    runtime = FakeSandboxRuntime()
    events = RecordedEvents(runtime)

    result = await run_script(
        runtime, Language.PYTHON, b'print("x" * 3000)', LIMITS, events
    )

    heard = "".join(event[1] for event in events.heard if event[0] == "stdout")
    assert heard == "x" * 1000
    assert result.stdout.text == heard
    assert result.stdout.truncated is True


async def test_a_timed_out_script_is_a_result_not_an_error() -> None:
    limits = dataclasses.replace(LIMITS, timeout_s=0.1)

    result = await run_script(FakeSandboxRuntime(), Language.BASH, b"sleep 10", limits)

    assert result.outcome.timed_out is True
    assert result.outcome.exit_code is None


async def test_an_out_of_memory_verdict_comes_from_the_runtime() -> None:
    runtime = FakeSandboxRuntime()
    runtime.program(b"grow()", FakeBehaviour(oom_killed=True, exit_code=137))

    result = await run_script(runtime, Language.PYTHON, b"grow()", LIMITS)

    assert result.summary()["oom_killed"] is True


async def test_the_sandbox_id_is_bound_to_every_log_line_of_the_execution(
    logs: list[EventDict],
) -> None:
    result = await run_script(FakeSandboxRuntime(), Language.BASH, b"echo hi", LIMITS)

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
        await run_script(BrokenRuntime(), Language.BASH, b"echo hi", LIMITS)


async def test_each_execution_gets_its_own_sandbox_id() -> None:
    runtime = FakeSandboxRuntime()

    ids = {(await run_script(runtime, Language.BASH, b"echo hi", LIMITS)).sandbox_id
           for _ in range(5)}

    assert len(ids) == 5


# The use case: packages, capacity and metrics behind one call ----------------------------


async def test_ephemeral_executions_share_the_memory_budget_with_managed_sandboxes(
    new_sandboxes: NewSandboxes,
) -> None:
    capacity = Capacity(max_executions=4, memory_budget_mb=SESSION.memory_mb + 100, wait_s=0.05)
    sandboxes = new_sandboxes(capacity=capacity)
    await session(sandboxes)

    with pytest.raises(AtCapacity):
        await execute_script(sandboxes, Language.PYTHON, b'print("hi")\n',
                             dataclasses.replace(LIMITS, memory_mb=101))
    result = await execute_script(sandboxes, Language.PYTHON, b'print("hi")\n',
                                  dataclasses.replace(LIMITS, memory_mb=100))

    assert result.stdout.text == "hi\n"
    assert capacity.memory_mb == SESSION.memory_mb
    assert capacity.executions == 0


async def test_the_packages_a_script_asks_for_are_installed_and_mounted(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime
) -> None:
    installer = FakePackageInstaller()
    sandboxes = new_sandboxes(installer=installer)
    source = b'# /// script\n# dependencies = ["tablib"]\n# ///\nprint("hi")\n'

    await execute_script(sandboxes, Language.PYTHON, source, LIMITS, packages=["attrs"])

    [(spec, _)] = runtime.runs
    assert [installed.requirements for installed in installer.installed] == [("attrs", "tablib")]
    assert len(spec.package_dirs) == 1
    assert spec.package_dirs[0].startswith("/fake/packages/")


async def test_a_package_that_cannot_be_installed_is_refused_before_anything_starts(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime
) -> None:
    capacity = Capacity(max_executions=4, memory_budget_mb=1024, wait_s=0.05)
    sandboxes = new_sandboxes(installer=FakePackageInstaller(unavailable=["nowhere"]),
                              capacity=capacity)
    events = RecordedEvents(runtime)

    with pytest.raises(PackageResolutionFailed):
        await execute_script(sandboxes, Language.PYTHON, b"print(1)\n", LIMITS, events,
                             packages=["nowhere"])

    assert (events.heard, runtime.runs) == ([], [])
    assert (capacity.executions, capacity.memory_mb) == (0, 0)


async def test_packages_for_bash_are_refused(new_sandboxes: NewSandboxes) -> None:
    sandboxes = new_sandboxes(installer=FakePackageInstaller())

    with pytest.raises(InvalidRequest, match="only be installed for Python"):
        await execute_script(sandboxes, Language.BASH, b"echo hi\n", LIMITS, packages=["attrs"])


async def test_each_execution_is_counted_with_its_verdict(new_sandboxes: NewSandboxes) -> None:
    finished: list[tuple[str, str]] = []

    class Recording(NoMetrics):
        def execution_finished(self, kind: ExecutionKind, verdict: Verdict,
                               seconds: float) -> None:
            finished.append((kind, verdict))

    sandboxes = new_sandboxes(metrics=Recording())

    await execute_script(sandboxes, Language.BASH, b"echo hi\n", LIMITS)
    await execute_script(sandboxes, Language.BASH, b"exit 3\n", LIMITS)

    assert finished == [("execute", "ok"), ("execute", "failed")]
