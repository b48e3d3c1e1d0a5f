"""After a start, the store and the host are made to agree: nothing unknown is left on the
host (template images included), and no record claims a state the host does not have."""

from __future__ import annotations

import contextlib

import structlog

from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_locked
from sandbox.domain.model import Sandbox, SandboxKind, SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


async def reconcile(sandboxes: Sandboxes) -> None:
    records = {sandbox.sandbox_id: sandbox for sandbox in await sandboxes.store.list()}
    running = await sandboxes.runtime.running_ids()
    for sandbox in records.values():
        await _reconcile_one(sandboxes, sandbox, sandbox.sandbox_id in running)
    for sandbox_id in await sandboxes.runtime.leftover_ids() - set(records):
        log.warning("sandbox.orphan_removed", sandbox_id=sandbox_id)
        await sandboxes.runtime.destroy(sandbox_id)
    for sandbox_id in await sandboxes.outputs.ids() - set(records):
        await sandboxes.outputs.remove(sandbox_id)
    await _collect_images(sandboxes)


async def _collect_images(sandboxes: Sandboxes) -> None:
    """An image with no template record is one a crash cut short: a snapshot's before its
    record was written, or a fork's scratch image."""
    templates = sandboxes.kept_templates
    if templates is None:
        return
    recorded = {template.template_id for template in await templates.store.list()}
    for key in await templates.images.keys() - recorded:
        log.warning("template.orphan_image_removed", key=key)
        await templates.images.remove(key)


async def _reconcile_one(sandboxes: Sandboxes, sandbox: Sandbox, running: bool) -> None:
    sandbox_id = sandbox.sandbox_id
    if sandbox.state is SandboxState.SUSPENDED:
        return
    if sandbox.state in (SandboxState.EXITED, SandboxState.FAILED):
        await sandboxes.runtime.destroy(sandbox_id)
        return
    if sandbox.state is SandboxState.RUNNING and sandbox.kind is SandboxKind.SESSION \
            and running:
        # A session holds nothing but its files and processes: keep them on disk.
        with contextlib.suppress(RuntimeFailure):
            await suspend_locked(sandboxes, sandbox, Reason.of(ReasonCode.SERVER_RESTARTED))
            return
        if (await sandboxes.get(sandbox_id)).state is SandboxState.FAILED:
            return  # the failed suspend ended it, and its record says so
    await sandboxes.runtime.destroy(sandbox_id)
    reason = Reason.of(ReasonCode.SERVER_RESTARTED if running else ReasonCode.LOST)
    state = SandboxState.EXITED if sandbox.state is SandboxState.RUNNING \
        else SandboxState.FAILED
    await sandboxes.save(sandbox, state, reason, running_since=None)
    log.warning("sandbox.reconciled", sandbox_id=sandbox_id, state=state.value,
                reason_code=reason.code)
