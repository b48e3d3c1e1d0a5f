"""The supervisor of a running sandbox records how it ended; a detached script's time limit
spans suspends. The clock is moved by hand."""

from __future__ import annotations

import errno

import pytest
from lifecycle_support import LIMITS, ControlledRuntime, ManualClock, NewSandboxes, limits, settled
from structlog.testing import capture_logs

from sandbox.adapters.fake import FakeBehaviour
from sandbox.adapters.memory_store import InMemoryOutputLog
from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.lifecycle.creation import create_session, run_detached
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.model import Language, Outcome, SandboxKind, SandboxState, Stream
from sandbox.domain.ports import OutputSink
from sandbox.domain.reasons import ReasonCode

pytestmark = pytest.mark.anyio


async def test_a_detached_script_past_its_time_limit_is_ended_as_timed_out(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await run_detached(sandboxes, Language.PYTHON, b"time.sleep(30)\n",
                                         limits(timeout_s=0.05))

    ended = await settled(sandboxes, sandbox.sandbox_id)

    assert (ended.state, ended.exit_code) == (SandboxState.EXITED, None)
    assert (ended.reason_code, ended.reason) == (ReasonCode.TIMED_OUT, "timed out after 0.05 s")
    assert runtime.live == set()


async def test_only_the_time_a_detached_script_ran_counts_not_the_time_it_was_suspended(
    sandboxes: Sandboxes, clock: ManualClock
) -> None:
    sandbox = await run_detached(sandboxes, Language.PYTHON, b"time.sleep(60)\n",
                                         limits(timeout_s=30))
    clock.advance(6)
    await suspend_sandbox(sandboxes, sandbox.sandbox_id)
    clock.advance(1000)
    await restore_sandbox(sandboxes, sandbox.sandbox_id)
    clock.advance(3)

    suspended_again = await suspend_sandbox(sandboxes, sandbox.sandbox_id)

    assert suspended_again.run_seconds == 9


async def test_a_detached_script_that_used_up_its_time_before_a_suspend_times_out_on_restore(
    sandboxes: Sandboxes, clock: ManualClock, runtime: ControlledRuntime
) -> None:
    sandbox = await run_detached(sandboxes, Language.PYTHON, b"time.sleep(60)\n",
                                         limits(timeout_s=30))
    clock.advance(31)
    await suspend_sandbox(sandboxes, sandbox.sandbox_id)
    await restore_sandbox(sandboxes, sandbox.sandbox_id)

    ended = await settled(sandboxes, sandbox.sandbox_id)

    assert (ended.state, ended.reason_code) == (SandboxState.EXITED, ReasonCode.TIMED_OUT)
    assert ended.run_seconds == 31
    assert runtime.live == set()


async def test_a_detached_script_killed_for_its_memory_says_so(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    runtime.program(b"grow()", FakeBehaviour(oom_killed=True))
    sandbox = await run_detached(sandboxes, Language.PYTHON, b"grow()", LIMITS)

    ended = await settled(sandboxes, sandbox.sandbox_id)

    assert (ended.state, ended.exit_code) == (SandboxState.EXITED, 137)
    assert (ended.reason_code, ended.reason) == (ReasonCode.OUT_OF_MEMORY,
                                                 "killed: out of memory")


# Whatever the supervisor meets, the sandbox ends with a recorded state and reason ---------


class FullDiskOutputLog(InMemoryOutputLog):
    """Kept output that cannot be written: every sink fails as a full disk does."""

    def sink(self, sandbox_id: str, limit_bytes: int) -> OutputSink:
        return FullDiskSink()


class FullDiskSink(OutputSink):
    async def write(self, stream: Stream, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device",
                      "/var/lib/gvisor-sandbox/state/outputs/x/stdout")


@pytest.fixture
def capacity() -> Capacity:
    return Capacity(max_executions=1, memory_budget_mb=10_000, wait_s=0)


async def test_a_detached_script_whose_output_cannot_be_kept_ends_failed_and_frees_its_memory(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime, capacity: Capacity
) -> None:
    sandboxes = new_sandboxes(other_outputs=FullDiskOutputLog(), capacity=capacity)
    sandbox = await run_detached(sandboxes, Language.PYTHON,
                                 b'print("x")\ntime.sleep(30)\n', LIMITS)

    with capture_logs() as logs:
        ended = await settled(sandboxes, sandbox.sandbox_id)

    assert (ended.state, ended.reason_code) == (SandboxState.FAILED, ReasonCode.OUTPUT_FAILED)
    assert "/var/lib" not in ended.reason
    assert (capacity.memory_mb, runtime.live) == (0, set())
    [logged] = [entry for entry in logs if entry["event"] == "sandbox.output_failed"]
    assert logged["sandbox_id"] == sandbox.sandbox_id
    assert "No space left on device" in logged["detail"]


async def broken_wait(sandbox_id: str) -> Outcome:
    raise OSError(errno.EPIPE, "runsc wait: broken pipe in /run/runsc/0123")


@pytest.mark.parametrize("kind", [SandboxKind.SCRIPT, SandboxKind.SESSION])
async def test_a_supervisor_whose_runtime_fails_ends_the_sandbox_failed_and_frees_its_memory(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime, capacity: Capacity,
    monkeypatch: pytest.MonkeyPatch, kind: SandboxKind,
) -> None:
    sandboxes = new_sandboxes(capacity=capacity)
    monkeypatch.setattr(runtime, "wait", broken_wait)

    with capture_logs() as logs:
        if kind is SandboxKind.SCRIPT:
            sandbox = await run_detached(sandboxes, Language.BASH, b"sleep 30\n", LIMITS)
        else:
            sandbox = await create_session(sandboxes, Language.BASH, LIMITS)
        ended = await settled(sandboxes, sandbox.sandbox_id)

    assert (ended.state, ended.reason_code) == (SandboxState.FAILED,
                                                ReasonCode.SUPERVISION_FAILED)
    assert "runsc" not in ended.reason
    assert (capacity.memory_mb, runtime.live) == (0, set())
    [logged] = [entry for entry in logs if entry["event"] == "sandbox.supervision_failed"]
    assert (logged["sandbox_id"], logged["log_level"]) == (sandbox.sandbox_id, "error")
    assert "broken pipe" in logged["detail"]


async def test_a_supervisor_still_records_the_end_when_the_runtime_cannot_destroy_the_sandbox(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime, capacity: Capacity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandboxes = new_sandboxes(capacity=capacity)
    monkeypatch.setattr(runtime, "wait", broken_wait)

    async def broken_destroy(sandbox_id: str) -> None:
        raise RuntimeFailure("runsc delete failed: device or resource busy")

    monkeypatch.setattr(runtime, "destroy", broken_destroy)

    with capture_logs() as logs:
        sandbox = await run_detached(sandboxes, Language.BASH, b"sleep 30\n", LIMITS)
        ended = await settled(sandboxes, sandbox.sandbox_id)

    assert (ended.state, ended.reason_code) == (SandboxState.FAILED,
                                                ReasonCode.SUPERVISION_FAILED)
    assert capacity.memory_mb == 0
    assert "sandbox.destroy_failed" in [entry["event"] for entry in logs]
    monkeypatch.undo()
