"""Restoring a suspended sandbox: its processes continue where they stopped."""

from __future__ import annotations

import time

import structlog

from sandbox.domain.errors import CheckpointMismatch, RuntimeFailure
from sandbox.domain.ids import checked_sandbox_id
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.supervision import output_sink, supervise
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


async def restore_sandbox(sandboxes: Sandboxes, sandbox_id: str) -> Sandbox:
    async with sandboxes.lock(checked_sandbox_id(sandbox_id)):
        sandbox = await sandboxes.require(sandbox_id, SandboxState.SUSPENDED, "restore")
        async with sandboxes.admission.admitted(sandbox):
            return await _restore_locked(sandboxes, sandbox)


async def _restore_locked(sandboxes: Sandboxes, sandbox: Sandbox) -> Sandbox:
    require_identity(sandboxes, sandbox.checkpoint_identity, "the checkpoint")
    assert sandbox.checkpoint is not None
    started = time.monotonic()
    sink = output_sink(sandboxes, sandbox)
    try:
        await sandboxes.runtime.restore(sandbox.spec(), sandbox.checkpoint, sink)
    except RuntimeFailure as failure:
        log.error("sandbox.restore_failed", sandbox_id=sandbox.sandbox_id,
                  detail=failure.message)
        await sandboxes.save(sandbox, SandboxState.FAILED, Reason.of(ReasonCode.RESTORE_FAILED))
        raise RuntimeFailure(failure.message, public_message=(
            "the sandbox could not be restored (its checkpoint is unusable, or the runtime "
            "failed); it is now failed: its record says why, and it can only be deleted"
        )) from None
    await sandboxes.runtime.discard_checkpoint(sandbox.checkpoint)
    now = sandboxes.clock()
    sandbox = await sandboxes.save(sandbox, SandboxState.RUNNING,
                                   Reason.of(ReasonCode.RESTORED),
                                   checkpoint=None, checkpoint_identity=(),
                                   running_since=now, last_activity_at=now)
    supervise(sandboxes, sandbox, sink)
    seconds = time.monotonic() - started
    sandboxes.metrics.sandbox_restored(seconds)
    log.info("sandbox.restored", sandbox_id=sandbox.sandbox_id, ms=int(seconds * 1000))
    return sandbox


def require_identity(
    sandboxes: Sandboxes, identity: tuple[tuple[str, str], ...], what: str
) -> None:
    """An image made under another runtime identity (version, rootfs, agent, platform) is
    refused: CheckpointMismatch, a 409 saying which."""
    expected = dict(identity)
    if expected != sandboxes.runtime.identity:
        raise CheckpointMismatch(
            f"{what} was made with {_describe(expected)}, but this server "
            f"runs {_describe(sandboxes.runtime.identity)}; it cannot be restored here"
        )


def _describe(identity: dict[str, str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(identity.items())) or "nothing"
