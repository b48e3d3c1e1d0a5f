"""The timers: idle sessions are suspended, what outlived its retention is deleted, the
sandboxes of instances that stopped without saving them are recorded lost, and checkpoint
images no record names are collected. Every instance runs them: each step is idempotent, and
writes about a running sandbox are made under its lease."""

from __future__ import annotations

import structlog

from sandbox.domain.lifecycle.deletion import delete_locked
from sandbox.domain.lifecycle.leases import sweep_expired
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import CHECKPOINT_PREFIX, suspend_locked
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)

# An image no record names is collected only this long after it was last written: a
# suspend publishes its image before its record names it.
ORPHAN_IMAGE_AGE_S = 3600.0
# Listing the whole checkpoint folder (a bucket) is not done at every round.
COLLECT_EVERY_S = 600.0


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
    await sweep_expired(sandboxes)
    if now - sandboxes.collected_at >= COLLECT_EVERY_S:
        await collect_images(sandboxes)
        sandboxes.collected_at = now


async def collect_images(sandboxes: Sandboxes) -> list[str]:
    """Remove checkpoint images that no record names (a suspend whose record was never
    written, a restore that did not get to remove its image), once old enough."""
    named = {sandbox.checkpoint for sandbox in await sandboxes.store.list()
             if sandbox.checkpoint is not None}
    return await sandboxes.images.collect(CHECKPOINT_PREFIX, named, ORPHAN_IMAGE_AGE_S)


async def _reap_locked(sandboxes: Sandboxes, sandbox: Sandbox, now: float) -> None:
    idle_for = now - sandbox.last_activity_at
    if (sandbox.state is SandboxState.RUNNING and sandbox.idle_timeout_s is not None
            and idle_for > sandbox.idle_timeout_s and not sandboxes.busy[sandbox.sandbox_id]):
        if sandboxes.ownership.holds(sandbox.sandbox_id):  # else its own instance's timer
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
