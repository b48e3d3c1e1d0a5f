"""After a start, the store and this host are made to agree: nothing unknown is left on the
host (template images included), and no record claims a state the host does not have.

On a store other instances share, only what this instance may own is settled: a sandbox
another instance holds a live lease on is theirs (a container of it found here is a stale
copy, and ended); one without a live lease (its owner stopped) is taken over here.
"""

from __future__ import annotations

import contextlib

import structlog

from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.lifecycle.leases import record_lost
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_locked
from sandbox.domain.model import Sandbox, SandboxKind, SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


async def reconcile(sandboxes: Sandboxes) -> None:
    # Output ids first: a record is written before its output, so an output whose record
    # is missing from the later list has none (on a shared store others create meanwhile).
    with_output = await sandboxes.outputs.ids()
    records = {sandbox.sandbox_id: sandbox for sandbox in await sandboxes.store.list()}
    running = await sandboxes.runtime.running_ids()
    for sandbox in records.values():
        await _reconcile_one(sandboxes, sandbox, sandbox.sandbox_id in running)
    for sandbox_id in await sandboxes.runtime.leftover_ids() - set(records):
        log.warning("sandbox.orphan_removed", sandbox_id=sandbox_id)
        await sandboxes.runtime.destroy(sandbox_id)
    for sandbox_id in with_output - set(records):
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
    async with sandboxes.lock(sandbox_id):
        lease = await sandboxes.ownership.leases.current(sandbox_id)
        if lease is not None and lease.owner != sandboxes.instance_id:
            if running:
                log.warning("sandbox.stale_copy_removed", sandbox_id=sandbox_id,
                            owner=lease.owner)
                await sandboxes.runtime.destroy(sandbox_id)
            return
        if not await sandboxes.ownership.acquire(sandbox_id):
            return  # taken over meanwhile
        try:
            await _settle(sandboxes, sandbox, running)
        finally:
            await sandboxes.ownership.release(sandbox_id)


async def _settle(sandboxes: Sandboxes, sandbox: Sandbox, running: bool) -> None:
    """A record that says it runs, held by us now: a session that still runs is suspended
    (it holds nothing but its files and processes: keep them on disk); anything else is
    ended, with why."""
    current = await sandboxes.store.get(sandbox.sandbox_id)
    if current is None or current.state not in (SandboxState.CREATING, SandboxState.RUNNING):
        return
    if current.state is SandboxState.RUNNING and current.kind is SandboxKind.SESSION \
            and running:
        with contextlib.suppress(RuntimeFailure):
            await suspend_locked(sandboxes, current, Reason.of(ReasonCode.SERVER_RESTARTED))
            return
        if (await sandboxes.get(sandbox.sandbox_id)).state is SandboxState.FAILED:
            return  # the failed suspend ended it, and its record says so
    await record_lost(sandboxes, current, running_here=running)
