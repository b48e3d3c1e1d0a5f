"""Suspending a running sandbox: a checkpoint to disk, memory and processes and all."""

from __future__ import annotations

import time

import structlog

from sandbox.domain.errors import InvalidState, RuntimeFailure
from sandbox.domain.ids import checked_sandbox_id
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


async def suspend_sandbox(sandboxes: Sandboxes, sandbox_id: str) -> Sandbox:
    async with sandboxes.lock(checked_sandbox_id(sandbox_id)):
        sandbox = await sandboxes.require(sandbox_id, SandboxState.RUNNING, "suspend")
        if sandboxes.busy[sandbox.sandbox_id]:
            raise InvalidState("the sandbox is busy with an exec or a file call; "
                               "suspend it when that has finished")
        return await suspend_locked(sandboxes, sandbox, Reason.of(ReasonCode.SUSPENDED))


async def suspend_locked(sandboxes: Sandboxes, sandbox: Sandbox, reason: Reason) -> Sandbox:
    """Suspend a running sandbox whose lock the caller holds."""
    started = time.monotonic()
    try:
        image = await sandboxes.runtime.checkpoint(sandbox.sandbox_id)
    except RuntimeFailure as failure:
        log.error("sandbox.suspend_failed", sandbox_id=sandbox.sandbox_id,
                  detail=failure.message)
        await _fail_if_ended(sandboxes, sandbox, failure)
        raise  # it runs on as it was
    now = sandboxes.clock()
    sandbox = await sandboxes.save(
        sandbox, SandboxState.SUSPENDED, reason, checkpoint=image,
        checkpoint_identity=tuple(sorted(sandboxes.runtime.identity.items())),
        run_seconds=sandbox.run_seconds + now - (sandbox.running_since or now),
        running_since=None,
    )
    seconds = time.monotonic() - started
    sandboxes.metrics.sandbox_suspended(seconds)
    log.info("sandbox.suspended", sandbox_id=sandbox.sandbox_id, reason_code=reason.code,
             ms=int(seconds * 1000))
    return sandbox


async def _fail_if_ended(
    sandboxes: Sandboxes, sandbox: Sandbox, failure: RuntimeFailure
) -> None:
    """A checkpoint that fails half-way (a full disk) ends the sandbox: record it as failed,
    saying why, rather than let its supervisor call it an exit."""
    if sandbox.sandbox_id in await sandboxes.runtime.running_ids():
        return
    await sandboxes.runtime.destroy(sandbox.sandbox_id)
    await sandboxes.save(sandbox, SandboxState.FAILED, Reason.of(ReasonCode.SUSPEND_FAILED),
                         running_since=None)
    raise RuntimeFailure(failure.message, public_message=(
        "the suspend failed and the sandbox has ended (a checkpoint that cannot be "
        "written ends it); it is now failed: its record says why, and it can only be deleted"
    )) from None
