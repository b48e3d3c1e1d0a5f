"""Keeping the leases of what runs here alive, and settling the sandboxes of instances that
stopped without saving them.

The heartbeat renews every lease this instance holds; a lease that is gone, or that could
not be renewed in time, is given up and its container ended here (self-fencing), before any
other instance may take the sandbox. It also ends the containers of sandboxes whose records
were deleted on another instance. Any instance settles an expired lease: the sandbox is
recorded `lost` (its owner stopped without a checkpoint), once, by whichever acquires it.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from sandbox.domain.errors import StoreUnavailable
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


async def renew_leases(sandboxes: Sandboxes) -> None:
    """One heartbeat."""
    for sandbox_id in await sandboxes.ownership.renew():
        await sandboxes.lost_here(sandbox_id)
    for sandbox_id in list(sandboxes.ownership.held):
        with contextlib.suppress(StoreUnavailable):
            await end_if_deleted(sandboxes, sandbox_id)


async def keep_leases(sandboxes: Sandboxes) -> None:
    """Heartbeats until cancelled."""
    while True:
        await asyncio.sleep(sandboxes.ownership.renew_every_s)
        try:
            await renew_leases(sandboxes)
        except Exception:
            log.exception("lease.heartbeat_failed")


async def end_if_deleted(sandboxes: Sandboxes, sandbox_id: str) -> None:
    """A sandbox that runs here but whose record is gone (deleted on another instance) is
    ended here, and its lease released."""
    async with sandboxes.lock(sandbox_id):
        if not sandboxes.ownership.holds(sandbox_id):
            return
        if await sandboxes.store.get(sandbox_id) is not None:
            return
        await sandboxes.runtime.destroy(sandbox_id)
        sandboxes.capacity.release(sandbox_id)
        await sandboxes.ownership.release(sandbox_id)
    sandboxes.forget(sandbox_id)
    log.info("sandbox.deleted_elsewhere", sandbox_id=sandbox_id)


async def sweep_expired(sandboxes: Sandboxes) -> None:
    """Settle every lease that expired without being released."""
    for lease in await sandboxes.ownership.leases.expired():
        if sandboxes.ownership.holds(lease.sandbox_id):
            continue  # ours: the heartbeat finds it lost and ends it here
        try:
            await settle_ownerless(sandboxes, lease.sandbox_id)
        except Exception:
            log.exception("sandbox.sweep_failed", sandbox_id=lease.sandbox_id)


async def settle_ownerless(sandboxes: Sandboxes, sandbox_id: str) -> None:
    """A sandbox with no live lease (its owner stopped): take the lease and, if its record
    still says it runs, record it lost; the lease row is cleared either way. Another
    instance holding a live lease wins, and this does nothing."""
    async with sandboxes.lock(sandbox_id):
        if sandboxes.ownership.holds(sandbox_id):
            return
        if not await sandboxes.ownership.acquire(sandbox_id):
            return
        try:
            sandbox = await sandboxes.store.get(sandbox_id)
            if sandbox is not None and sandbox.state in (SandboxState.CREATING,
                                                         SandboxState.RUNNING):
                await record_lost(sandboxes, sandbox, running_here=False)
        finally:
            await sandboxes.ownership.release(sandbox_id)


async def record_lost(sandboxes: Sandboxes, sandbox: Sandbox, running_here: bool) -> None:
    """Record a sandbox that does not run any more (or is ended now: `running_here`) with
    why, holding its lease; anything of it on this host is removed."""
    await sandboxes.runtime.destroy(sandbox.sandbox_id)
    reason = Reason.of(ReasonCode.SERVER_RESTARTED if running_here else ReasonCode.LOST)
    state = SandboxState.EXITED if sandbox.state is SandboxState.RUNNING \
        else SandboxState.FAILED
    await sandboxes.save(sandbox, state, reason, running_since=None)
    log.warning("sandbox.reconciled", sandbox_id=sandbox.sandbox_id, state=state.value,
                reason_code=reason.code)
