"""On shutdown, what runs here is checkpointed to the image store (within the grace period,
several at once, the smallest first so that as many as possible fit), so that a restart, or
any other instance, restores it; its next call does so by itself. What does not fit keeps its
lease until it expires: the next start on this state folder reconciles it, or another
instance records it lost."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from sandbox.domain.lifecycle.handoff import released
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_locked
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.ports import HandoffState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


async def shut_down(sandboxes: Sandboxes) -> None:
    sandboxes.stopping = True
    if sandboxes.policy.suspend_on_shutdown:
        try:
            async with asyncio.timeout(sandboxes.policy.shutdown_grace_s):
                await _suspend_all(sandboxes, Reason.of(ReasonCode.SERVER_STOPPED))
        except TimeoutError:
            log.warning("sandbox.shutdown_grace_expired",
                        unsaved=sorted(sandboxes.ownership.held))
    for task in [*sandboxes.supervisors.values(), *sandboxes.background]:
        task.cancel()
    for task in [*sandboxes.supervisors.values(), *sandboxes.background]:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _suspend_all(sandboxes: Sandboxes, reason: Reason) -> None:
    running = [sandbox for sandbox in await sandboxes.store.list(SandboxState.RUNNING)
               if sandboxes.ownership.holds(sandbox.sandbox_id)]
    # Smallest first (by memory limit, the most a checkpoint can hold): within a grace
    # period, the most sandboxes are saved that way.
    running.sort(key=lambda sandbox: sandbox.limits.memory_mb)
    places = asyncio.Semaphore(sandboxes.policy.shutdown_concurrency)
    log.info("sandbox.shutdown_suspending", count=len(running),
             concurrency=sandboxes.policy.shutdown_concurrency)

    async def one(sandbox: Sandbox) -> None:
        async with places:
            await _suspend_one(sandboxes, sandbox, reason)

    await asyncio.gather(*(one(sandbox) for sandbox in running))


async def _suspend_one(sandboxes: Sandboxes, sandbox: Sandbox, reason: Reason) -> None:
    async with sandboxes.lock(sandbox.sandbox_id):
        current = await sandboxes.store.get(sandbox.sandbox_id)
        if (current is None or current.state is not SandboxState.RUNNING
                or not sandboxes.ownership.holds(sandbox.sandbox_id)):
            return
        try:
            await suspend_locked(sandboxes, current, reason)
        except Exception:
            log.warning("sandbox.shutdown_suspend_failed", sandbox_id=sandbox.sandbox_id,
                        exc_info=True)
            return
    # A call waiting on another instance restores it there at once.
    request = await sandboxes.handoffs.get(sandbox.sandbox_id)
    requester = (request.requester if request is not None
                 and request.state is HandoffState.REQUESTED else None)
    with contextlib.suppress(Exception):
        await released(sandboxes, sandbox.sandbox_id, requester)

