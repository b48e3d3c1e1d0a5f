"""The supervisor of a running sandbox records how it ended; a detached script's time limit
spans suspends. The clock is moved by hand."""

from __future__ import annotations

import pytest
from lifecycle_support import LIMITS, ControlledRuntime, ManualClock, limits, settled

from sandbox.adapters.fake import FakeBehaviour
from sandbox.domain.lifecycle.creation import run_detached
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.model import Language, SandboxState
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

