"""Suspending a running sandbox: a checkpoint, memory and processes and all, published to the
image store where any instance can restore it; then its lease is released."""

from __future__ import annotations

import secrets
import time

import structlog

from sandbox.domain.errors import InvalidState, RuntimeFailure, Unavailable
from sandbox.domain.ids import checked_sandbox_id
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)

# The prefix of every checkpoint's image key: the reaper collects orphans under it alone.
CHECKPOINT_PREFIX = "checkpoint-"


def checkpoint_key(sandbox_id: str) -> str:
    """A new key per suspend: an image is never replaced, so an instance that lost its lease
    cannot overwrite the image a record names."""
    return f"{CHECKPOINT_PREFIX}{sandbox_id}-{secrets.token_hex(4)}"


async def suspend_sandbox(sandboxes: Sandboxes, sandbox_id: str) -> Sandbox:
    """Suspend a running sandbox, on whichever instance runs it: one running elsewhere is
    handed off (checkpointed by its owner), then recorded as suspended on request."""
    # Imported here: the handoff use case restores and suspends, so it imports this module.
    from sandbox.domain.lifecycle.handoff import deadline_for, ensure_here, resumable

    checked_sandbox_id(sandbox_id)
    await ensure_here(sandboxes, sandbox_id, deadline_for(sandboxes), restore=False)
    async with sandboxes.lock(sandbox_id):
        sandbox = await sandboxes.get(sandbox_id)
        if resumable(sandbox):
            return await _suspended_on_request(sandboxes, sandbox)
        sandbox = await sandboxes.require(sandbox_id, SandboxState.RUNNING, "suspend")
        if not sandboxes.ownership.holds(sandbox_id):
            raise Unavailable(f"sandbox {sandbox_id} moved to another server instance "
                              "meanwhile; retry the call")
        if sandboxes.busy[sandbox.sandbox_id]:
            raise InvalidState("the sandbox is busy with an exec or a file call; "
                               "suspend it when that has finished")
        return await suspend_locked(sandboxes, sandbox, Reason.of(ReasonCode.SUSPENDED))


async def _suspended_on_request(sandboxes: Sandboxes, sandbox: Sandbox) -> Sandbox:
    """A sandbox the service suspended (a handoff, a stop) becomes its user's: the record
    says so, written under its lease so that no restore elsewhere is overwritten."""
    if not await sandboxes.ownership.acquire(sandbox.sandbox_id):
        raise InvalidState(f"sandbox {sandbox.sandbox_id} is being restored by another "
                           "server instance")
    try:
        current = await sandboxes.require(sandbox.sandbox_id, SandboxState.SUSPENDED,
                                          "suspend")
        return await sandboxes.save(current, SandboxState.SUSPENDED,
                                    Reason.of(ReasonCode.SUSPENDED))
    finally:
        await sandboxes.ownership.release(sandbox.sandbox_id)


async def suspend_locked(sandboxes: Sandboxes, sandbox: Sandbox, reason: Reason) -> Sandbox:
    """Suspend a sandbox that runs here, whose lock the caller holds."""
    started = time.monotonic()
    try:
        image = await sandboxes.runtime.checkpoint(sandbox.sandbox_id)
    except RuntimeFailure as failure:
        log.error("sandbox.suspend_failed", sandbox_id=sandbox.sandbox_id,
                  detail=failure.message)
        await _fail_if_ended(sandboxes, sandbox, failure)
        raise  # it runs on as it was
    identity = sandboxes.runtime.identity
    key = checkpoint_key(sandbox.sandbox_id)
    try:
        await sandboxes.images.publish(key, image, identity)
    except Exception as error:
        log.error("sandbox.suspend_failed", sandbox_id=sandbox.sandbox_id,
                  detail=f"the image could not be published: {error!r}")
        await _failed(sandboxes, sandbox)
        raise _ended_by_failure(f"publishing the checkpoint failed: {error!r}") from None
    finally:
        await sandboxes.runtime.discard_checkpoint(image)
    now = sandboxes.clock()
    try:
        sandbox = await sandboxes.save(
            sandbox, SandboxState.SUSPENDED, reason, checkpoint=key,
            checkpoint_identity=tuple(sorted(identity.items())),
            run_seconds=sandbox.run_seconds + now - (sandbox.running_since or now),
            running_since=None,
        )
    except BaseException:
        await sandboxes.images.remove(key)  # no record names it
        raise
    await sandboxes.ownership.release(sandbox.sandbox_id)
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
    await _failed(sandboxes, sandbox)
    raise _ended_by_failure(failure.message) from None


async def _failed(sandboxes: Sandboxes, sandbox: Sandbox) -> None:
    await sandboxes.runtime.destroy(sandbox.sandbox_id)
    try:
        await sandboxes.save(sandbox, SandboxState.FAILED,
                             Reason.of(ReasonCode.SUSPEND_FAILED), running_since=None)
    finally:
        await sandboxes.ownership.release(sandbox.sandbox_id)


def _ended_by_failure(message: str) -> RuntimeFailure:
    return RuntimeFailure(message, public_message=(
        "the suspend failed and the sandbox has ended (a checkpoint that cannot be "
        "written ends it); it is now failed: its record says why, and it can only be deleted"
    ))
