"""Deleting a sandbox in any state, and everything it left on the host."""

from __future__ import annotations

import structlog

from sandbox.domain.ids import checked_sandbox_id
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Sandbox
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


async def delete_sandbox(sandboxes: Sandboxes, sandbox_id: str) -> None:
    async with sandboxes.lock(checked_sandbox_id(sandbox_id)):
        sandbox = await sandboxes.get(sandbox_id)
        await delete_locked(sandboxes, sandbox, Reason.of(ReasonCode.DELETED))


async def delete_locked(sandboxes: Sandboxes, sandbox: Sandbox, reason: Reason) -> None:
    """Delete a sandbox whose lock the caller holds."""
    await sandboxes.runtime.destroy(sandbox.sandbox_id)
    await sandboxes.outputs.remove(sandbox.sandbox_id)
    await sandboxes.store.remove(sandbox.sandbox_id)
    sandboxes.capacity.release(sandbox.sandbox_id)
    sandboxes.forget(sandbox.sandbox_id)
    log.info("sandbox.deleted", sandbox_id=sandbox.sandbox_id, state=sandbox.state.value,
             reason_code=reason.code, reason=reason.text)
