"""Restoring a suspended sandbox, on whichever instance the call reached: its processes
continue where they stopped. The lease comes first, so of instances restoring one sandbox at
once a single one does; the image is fetched (checked against its manifest) and the package
layers rebuilt here before `runsc restore`; the image is removed once the record says
running."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import NoReturn

import structlog

from sandbox.domain.errors import CheckpointMismatch, InvalidState, RuntimeFailure
from sandbox.domain.ids import checked_sandbox_id
from sandbox.domain.image_store import ImageUnusable
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.supervision import output_sink, supervise
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


async def restore_sandbox(sandboxes: Sandboxes, sandbox_id: str) -> Sandbox:
    async with sandboxes.lock(checked_sandbox_id(sandbox_id)):
        sandbox = await sandboxes.require(sandbox_id, SandboxState.SUSPENDED, "restore")
        return await restore_locked(sandboxes, sandbox)


async def restore_locked(sandboxes: Sandboxes, sandbox: Sandbox) -> Sandbox:
    """Restore a suspended sandbox here, whose lock the caller holds."""
    async with sandboxes.admission.admitted(sandbox):
        if not await sandboxes.ownership.acquire(sandbox.sandbox_id):
            raise InvalidState(f"sandbox {sandbox.sandbox_id} is being restored by another "
                               "server instance")
        try:
            return await _restore_owned(sandboxes, sandbox.sandbox_id)
        except BaseException:
            await sandboxes.ownership.release(sandbox.sandbox_id)
            raise


async def _restore_owned(sandboxes: Sandboxes, sandbox_id: str) -> Sandbox:
    # Read again under the lease: it may have been restored (and suspended) since.
    sandbox = await sandboxes.require(sandbox_id, SandboxState.SUSPENDED, "restore")
    await _forget_handoff(sandboxes, sandbox_id)
    require_identity(sandboxes, sandbox.checkpoint_identity, "the checkpoint")
    assert sandbox.checkpoint is not None
    started = time.monotonic()
    layers = await sandboxes.layers_here(sandbox)
    sink = output_sink(sandboxes, sandbox)
    try:
        fetched = await sandboxes.images.fetch(sandbox.checkpoint)
        try:
            await sandboxes.runtime.restore(
                _with_layers(sandbox, layers).spec(), fetched.folder, sink)
        finally:
            await sandboxes.images.release(fetched)
    except (RuntimeFailure, ImageUnusable) as failure:
        await _failed(sandboxes, sandbox, failure)
    now = sandboxes.clock()
    restored = await sandboxes.save(sandbox, SandboxState.RUNNING,
                                    Reason.of(ReasonCode.RESTORED),
                                    checkpoint=None, checkpoint_identity=(),
                                    package_dirs=layers, running_since=now,
                                    last_activity_at=now)
    await _remove_image(sandboxes, sandbox.checkpoint)
    supervise(sandboxes, restored, sink)
    seconds = time.monotonic() - started
    sandboxes.metrics.sandbox_restored(seconds)
    log.info("sandbox.restored", sandbox_id=sandbox_id, ms=int(seconds * 1000))
    return restored


async def _failed(
    sandboxes: Sandboxes, sandbox: Sandbox, failure: RuntimeFailure | ImageUnusable
) -> NoReturn:
    log.error("sandbox.restore_failed", sandbox_id=sandbox.sandbox_id, detail=failure.message)
    await sandboxes.runtime.destroy(sandbox.sandbox_id)  # what an earlier run left here
    await sandboxes.save(sandbox, SandboxState.FAILED, Reason.of(ReasonCode.RESTORE_FAILED))
    if sandbox.checkpoint is not None:
        await _remove_image(sandboxes, sandbox.checkpoint)
    raise RuntimeFailure(failure.message, public_message=(
        "the sandbox could not be restored (its checkpoint is unusable, or the runtime "
        "failed); it is now failed: its record says why, and it can only be deleted"
    )) from None


async def _forget_handoff(sandboxes: Sandboxes, sandbox_id: str) -> None:
    """A handoff request answered before (its requester may be gone) is settled now that the
    sandbox has a new owner; a request made from now on is this owner's to answer."""
    request = await sandboxes.handoffs.get(sandbox_id)
    if request is not None:
        await sandboxes.handoffs.remove(sandbox_id, request.requester)


async def _remove_image(sandboxes: Sandboxes, key: str) -> None:
    # Left behind, it is an orphan the reaper collects.
    with contextlib.suppress(Exception):
        await sandboxes.images.remove(key)


def _with_layers(sandbox: Sandbox, layers: tuple[str, ...]) -> Sandbox:
    return dataclasses.replace(sandbox, package_dirs=layers)


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
