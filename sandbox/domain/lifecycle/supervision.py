"""A task per running sandbox waits for its init to end and records how, unless the sandbox
was suspended or deleted meanwhile."""

from __future__ import annotations

import asyncio

import structlog

from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Sandbox, SandboxKind, SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


def supervise(sandboxes: Sandboxes, sandbox: Sandbox) -> None:
    task = asyncio.create_task(_watch(sandboxes, sandbox))
    sandboxes.supervisors[sandbox.sandbox_id] = task

    def forget(done: asyncio.Task[None]) -> None:
        if sandboxes.supervisors.get(sandbox.sandbox_id) is done:
            del sandboxes.supervisors[sandbox.sandbox_id]

    task.add_done_callback(forget)


async def _watch(sandboxes: Sandboxes, sandbox: Sandbox) -> None:
    """A detached script's time limit counts only the time it ran (not while suspended)."""
    budget = None
    if sandbox.kind is SandboxKind.SCRIPT:
        budget = max(sandbox.limits.timeout_s - sandbox.run_seconds, 0.0)
    timed_out = False
    try:
        async with asyncio.timeout(budget):
            outcome = await sandboxes.runtime.wait(sandbox.sandbox_id)
    except TimeoutError:
        timed_out = True
    async with sandboxes.lock(sandbox.sandbox_id):
        current = await sandboxes.store.get(sandbox.sandbox_id)
        if current is None or current.state is not SandboxState.RUNNING:
            return
        if current.running_since != sandbox.running_since:
            return  # a later run of the same sandbox has its own supervisor
        await sandboxes.runtime.destroy(sandbox.sandbox_id)
        now = sandboxes.clock()
        if timed_out:
            exit_code = None
            reason = Reason.of(ReasonCode.TIMED_OUT, seconds=sandbox.limits.timeout_s)
        elif outcome.oom_killed:
            exit_code, reason = outcome.exit_code, Reason.of(ReasonCode.OUT_OF_MEMORY)
        elif outcome.exit_code is None:
            exit_code, reason = None, Reason.of(ReasonCode.VANISHED)
        else:
            exit_code = outcome.exit_code
            reason = Reason.of(ReasonCode.EXITED, exit_code=outcome.exit_code)
        await sandboxes.save(current, SandboxState.EXITED, reason, exit_code=exit_code,
                             run_seconds=current.run_seconds + now - (current.running_since or now),
                             running_since=None)
    log.info("sandbox.exited", sandbox_id=sandbox.sandbox_id, exit_code=exit_code,
             reason_code=reason.code)
