"""Deleting a sandbox in any state, and everything it left: its container, output, record
and checkpoint image. A sandbox running on another instance is deleted all the same: its
record goes, and its owner, signalled (or at its next heartbeat), ends its container."""

from __future__ import annotations

import structlog

from sandbox.domain.ids import checked_sandbox_id
from sandbox.domain.lifecycle import channels
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


async def delete_sandbox(sandboxes: Sandboxes, sandbox_id: str) -> None:
    async with sandboxes.lock(checked_sandbox_id(sandbox_id)):
        sandbox = await sandboxes.get(sandbox_id)
        await delete_locked(sandboxes, sandbox, Reason.of(ReasonCode.DELETED))


async def delete_locked(sandboxes: Sandboxes, sandbox: Sandbox, reason: Reason) -> None:
    """Delete a sandbox whose lock the caller holds."""
    sandbox_id = sandbox.sandbox_id
    elsewhere = (not sandboxes.ownership.holds(sandbox_id)
                 and sandbox.state in (SandboxState.CREATING, SandboxState.RUNNING))
    await sandboxes.runtime.destroy(sandbox_id)
    await sandboxes.outputs.remove(sandbox_id)
    await sandboxes.remove_record(sandbox_id)
    if sandbox.checkpoint is not None:
        await sandboxes.images.remove(sandbox.checkpoint)
    sandboxes.capacity.release(sandbox_id)
    await sandboxes.ownership.release(sandbox_id)
    sandboxes.forget(sandbox_id)
    request = await sandboxes.handoffs.get(sandbox_id)
    if request is not None:
        await sandboxes.handoffs.remove(sandbox_id, request.requester)
    if elsewhere:
        await sandboxes.signals.publish(channels.DELETED, sandbox_id)
        log.info("sandbox.owner_told_to_end", sandbox_id=sandbox_id)
    log.info("sandbox.deleted", sandbox_id=sandbox_id, state=sandbox.state.value,
             reason_code=reason.code, reason=reason.text)
