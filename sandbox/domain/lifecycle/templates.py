"""Templates: the state of a running sandbox kept as an immutable image (the sandbox runs
on), listed, and deleted once nothing depends on it. Starting sandboxes from one is in
copies.py."""

from __future__ import annotations

import time

import structlog

from sandbox.domain.errors import InvalidState, TemplateNotFound
from sandbox.domain.ids import ID_PATTERN, checked_sandbox_id, new_sandbox_id
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Sandbox, SandboxState, Template
from sandbox.domain.templates import Templates

log = structlog.get_logger(__name__)

# A sandbox in these states may still run from its template (or does).
DEPENDENT_STATES = frozenset({SandboxState.CREATING, SandboxState.RUNNING,
                              SandboxState.SUSPENDED})


async def snapshot_sandbox(sandboxes: Sandboxes, sandbox_id: str) -> Template:
    """Keep the running sandbox's memory, files and processes as a new template; the
    sandbox runs on. Refused (409) while an exec or a file call is at work in it."""
    templates = sandboxes.templates
    template_id = new_sandbox_id()
    started = time.monotonic()
    async with sandboxes.lock(checked_sandbox_id(sandbox_id)):
        sandbox = await sandboxes.require(sandbox_id, SandboxState.RUNNING, "snapshot")
        if sandboxes.busy[sandbox.sandbox_id]:
            raise InvalidState("the sandbox is busy with an exec or a file call; "
                               "snapshot it when that has finished")
        size = await keep_image(sandboxes, templates, sandbox, template_id)
    template = _template_of(sandboxes, sandbox, template_id, size)
    try:
        await templates.store.add(template)
    except BaseException:
        await templates.images.remove(template_id)
        raise
    log.info("template.created", template_id=template_id, sandbox_id=sandbox.sandbox_id,
             size_bytes=size, ms=int((time.monotonic() - started) * 1000))
    return template


async def keep_image(
    sandboxes: Sandboxes, templates: Templates, sandbox: Sandbox, key: str
) -> int:
    """Snapshot the running sandbox (whose lock the caller holds) into the image `key`;
    its size. On any failure nothing of the image is left."""
    image = await templates.images.prepare(key)
    try:
        size = await sandboxes.runtime.snapshot(sandbox.sandbox_id, image)
        await templates.images.publish(key)
    except BaseException:
        await templates.images.remove(key)
        raise
    return size


def _template_of(sandboxes: Sandboxes, sandbox: Sandbox, template_id: str, size: int) -> Template:
    now = sandboxes.clock()
    return Template(
        template_id=template_id, source_sandbox_id=sandbox.sandbox_id, kind=sandbox.kind,
        language=sandbox.language, limits=sandbox.limits, created_at=now, size_bytes=size,
        identity=tuple(sorted(sandboxes.runtime.identity.items())), env=sandbox.env,
        package_dirs=sandbox.package_dirs, network_allow=sandbox.network_allow,
        idle_timeout_s=sandbox.idle_timeout_s,
        run_seconds=sandbox.run_seconds + now - (sandbox.running_since or now),
    )


async def list_templates(sandboxes: Sandboxes) -> list[Template]:
    return await sandboxes.templates.store.list()


async def get_template(sandboxes: Sandboxes, template_id: str) -> Template:
    # Template ids have the form of sandbox ids: any other string names no template.
    template = (await sandboxes.templates.store.get(template_id)
                if ID_PATTERN.match(template_id) else None)
    if template is None:
        raise TemplateNotFound(f"no template with id {template_id[:64]!r}")
    return template


async def delete_template(sandboxes: Sandboxes, template_id: str) -> None:
    """Refused (409) while a sandbox started from it may still run (creating, running or
    suspended) or a warm pool keeps copies of it."""
    templates = sandboxes.templates
    await get_template(sandboxes, template_id)
    async with sandboxes.lock(template_id):
        template = await get_template(sandboxes, template_id)
        users = [sandbox.sandbox_id for sandbox in await sandboxes.store.list()
                 if sandbox.template_id == template_id and sandbox.state in DEPENDENT_STATES]
        if users:
            raise InvalidState(f"{len(users)} sandbox(es) started from this template may still "
                               f"run ({', '.join(users[:5])}); delete them first")
        if sandboxes.pool is not None and template_id in sandboxes.pool.template_ids():
            raise InvalidState("a warm pool keeps copies of this template (SANDBOX_POOL); "
                               "remove it from the pool first")
        # The record first: from then on nobody starts from it, and a crash leaves only an
        # image without a record, which the next start removes.
        await templates.store.remove(template_id)
        await templates.images.remove(template_id)
    sandboxes.forget(template_id)
    log.info("template.deleted", template_id=template_id, size_bytes=template.size_bytes)
