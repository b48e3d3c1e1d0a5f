"""On shutdown, what runs is suspended (within the grace period) so that a restart loses
nothing; whatever could not be suspended is left to the next start's reconcile."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_locked
from sandbox.domain.model import SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


async def shut_down(sandboxes: Sandboxes) -> None:
    if sandboxes.policy.suspend_on_shutdown:
        try:
            async with asyncio.timeout(sandboxes.policy.shutdown_grace_s):
                await _suspend_all(sandboxes, Reason.of(ReasonCode.SERVER_STOPPED))
        except TimeoutError:
            log.warning("sandbox.shutdown_grace_expired")
    for task in list(sandboxes.supervisors.values()):
        task.cancel()
    for task in list(sandboxes.supervisors.values()):
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _suspend_all(sandboxes: Sandboxes, reason: Reason) -> None:
    for sandbox in await sandboxes.store.list(SandboxState.RUNNING):
        async with sandboxes.lock(sandbox.sandbox_id):
            current = await sandboxes.store.get(sandbox.sandbox_id)
            if current is None or current.state is not SandboxState.RUNNING:
                continue
            try:
                await suspend_locked(sandboxes, current, reason)
            except RuntimeFailure:
                log.warning("sandbox.shutdown_suspend_failed", sandbox_id=sandbox.sandbox_id)
