"""The timers: idle sessions are suspended, and what outlived its retention is deleted."""

from __future__ import annotations

import structlog

from sandbox.domain.lifecycle.deletion import delete_locked
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_locked
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


async def reap(sandboxes: Sandboxes) -> None:
    """One round over every record; a failure with one is logged and the round goes on."""
    now = sandboxes.clock()
    for listed in await sandboxes.store.list():
        try:
            async with sandboxes.lock(listed.sandbox_id):
                # Re-read: since the list was taken it may have been used or restored.
                sandbox = await sandboxes.store.get(listed.sandbox_id)
                if sandbox is not None:
                    await _reap_locked(sandboxes, sandbox, now)
        except Exception:
            log.exception("sandbox.reap_failed", sandbox_id=listed.sandbox_id)


async def _reap_locked(sandboxes: Sandboxes, sandbox: Sandbox, now: float) -> None:
    idle_for = now - sandbox.last_activity_at
    if (sandbox.state is SandboxState.RUNNING and sandbox.idle_timeout_s is not None
            and idle_for > sandbox.idle_timeout_s and not sandboxes.busy[sandbox.sandbox_id]):
        idle = Reason.of(ReasonCode.IDLE_SUSPENDED, seconds=sandbox.idle_timeout_s)
        await suspend_locked(sandboxes, sandbox, idle)
        return
    policy = sandboxes.policy
    retention = (policy.suspended_retention_s if sandbox.state is SandboxState.SUSPENDED
                 else policy.retention_s)
    ended = sandbox.state in (SandboxState.EXITED, SandboxState.FAILED,
                              SandboxState.SUSPENDED)
    if ended and now - sandbox.updated_at > retention:
        await delete_locked(sandboxes, sandbox, Reason.of(ReasonCode.EXPIRED, seconds=retention))
