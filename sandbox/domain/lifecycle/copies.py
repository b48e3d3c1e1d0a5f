"""Sandboxes that continue from a saved state: started from a template, or forked from a
running sandbox (one snapshot, then as many restores as copies asked for). Each copy is a
new sandbox with its own id, record and output; its memory, files and processes are those
of the image, and it is told it is a new generation (see SandboxRuntime.restore)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import structlog

from sandbox.domain.errors import InvalidRequest, InvalidState
from sandbox.domain.ids import checked_sandbox_id, new_sandbox_id
from sandbox.domain.lifecycle.creation import Start, record_new, start_new
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.restoration import require_identity
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.templates import get_template
from sandbox.domain.model import Language, Sandbox, SandboxSpec, SandboxState, Template
from sandbox.domain.ports import OutputSink
from sandbox.domain.reasons import ReasonCode

log = structlog.get_logger(__name__)


async def create_from_template(
    sandboxes: Sandboxes,
    template_id: str,
    *,
    language: Language | None = None,
    idle_timeout_s: float | None = None,
    timeout_s: float | None = None,
) -> Sandbox:
    """A new sandbox continuing from the template's state, with what the template was made
    with (language, limits, env, packages, network); `timeout_s` (per exec) and
    `idle_timeout_s` may be changed, and a `language` given must be the template's. The
    template is left as it was."""
    template = await get_template(sandboxes, template_id)
    if language is not None and language is not template.language:
        raise InvalidRequest(f"the template runs {_named(template.language)}, not "
                             f"{language.value}: leave language out to start from it")
    require_identity(sandboxes, template.identity, "the template")
    sandbox = copy_of(sandboxes, template, template_id, idle_timeout_s, timeout_s)
    async with sandboxes.admission.admitted(sandbox):
        # Recorded under the template's lock, so a delete of the template sees this sandbox
        # (and refuses) or has removed it before (and this start finds no template).
        async with sandboxes.lock(template_id):
            await get_template(sandboxes, template_id)
            await record_new(sandboxes, sandbox)
        return await start_new(sandboxes, sandbox, restorer(sandboxes, template_id),
                               ReasonCode.RESTORE_FAILED, recorded=True)


async def fork_sandbox(sandboxes: Sandboxes, sandbox_id: str, count: int) -> list[Sandbox]:
    """`count` new sandboxes continuing from the running sandbox's present state (which runs
    on). All of them or none: places and memory for every copy are held first (429 when
    there is not enough), and if one copy fails to start, the others are deleted."""
    if not 1 <= count <= sandboxes.policy.max_fork:
        raise InvalidRequest(f"count must be from 1 to {sandboxes.policy.max_fork}")
    source = await sandboxes.require(checked_sandbox_id(sandbox_id), SandboxState.RUNNING,
                                     "fork")
    key = new_sandbox_id()  # the image's: a scratch image, removed once the copies run
    shape = _template_shape(sandboxes, source, key)
    copies = [copy_of(sandboxes, shape, None) for _ in range(count)]
    async with contextlib.AsyncExitStack() as admitted:
        for copy in copies:
            await admitted.enter_async_context(sandboxes.admission.admitted(copy))
        try:
            run_seconds = await _snapshot_for_fork(sandboxes, sandbox_id, key)
            copies = [dataclasses.replace(copy, run_seconds=run_seconds) for copy in copies]
            started = await asyncio.gather(
                *(start_new(sandboxes, copy, restorer(sandboxes, key), ReasonCode.RESTORE_FAILED)
                  for copy in copies),
                return_exceptions=True,
            )
        finally:
            await sandboxes.templates.images.remove(key)
    return await _all_or_none(sandboxes, sandbox_id, copies, started)


async def _snapshot_for_fork(sandboxes: Sandboxes, sandbox_id: str, key: str) -> float:
    """The source's state into the scratch image `key`; how long the source had run."""
    async with sandboxes.lock(sandbox_id):
        source = await sandboxes.require(sandbox_id, SandboxState.RUNNING, "fork")
        if sandboxes.busy[sandbox_id]:
            raise InvalidState("the sandbox is busy with an exec or a file call; "
                               "fork it when that has finished")
        image = await sandboxes.templates.images.prepare(key)
        await sandboxes.runtime.snapshot(sandbox_id, image)
    now = sandboxes.clock()
    return source.run_seconds + now - (source.running_since or now)


async def _all_or_none(
    sandboxes: Sandboxes, sandbox_id: str, copies: list[Sandbox],
    started: list[Sandbox | BaseException],
) -> list[Sandbox]:
    failures = [result for result in started if isinstance(result, BaseException)]
    if not failures:
        log.info("sandbox.forked", sandbox_id=sandbox_id,
                 copies=[copy.sandbox_id for copy in copies])
        return [result for result in started if isinstance(result, Sandbox)]
    for copy in copies:  # the failed ones too: their records say nothing the caller asked for
        with contextlib.suppress(Exception):
            await delete_sandbox(sandboxes, copy.sandbox_id)
    log.error("sandbox.fork_failed", sandbox_id=sandbox_id, failed=len(failures),
              count=len(copies))
    raise failures[0]


def restorer(sandboxes: Sandboxes, key: str) -> Start:
    """Start a sandbox by restoring the image `key` under its id."""
    async def restore(spec: SandboxSpec, sink: OutputSink) -> None:
        image = await sandboxes.templates.images.local(key)
        await sandboxes.runtime.restore(spec, image, sink)

    return restore


def copy_of(
    sandboxes: Sandboxes,
    template: Template,
    template_id: str | None,
    idle_timeout_s: float | None = None,
    timeout_s: float | None = None,
) -> Sandbox:
    """The record of a new copy of `template` (not yet added)."""
    now = sandboxes.clock()
    limits = (template.limits if timeout_s is None
              else dataclasses.replace(template.limits, timeout_s=timeout_s))
    return Sandbox(
        sandbox_id=new_sandbox_id(), kind=template.kind, state=SandboxState.CREATING,
        language=template.language, limits=limits, created_at=now, updated_at=now,
        env=template.env, package_dirs=template.package_dirs,
        network_allow=template.network_allow, last_activity_at=now,
        idle_timeout_s=template.idle_timeout_s if idle_timeout_s is None else idle_timeout_s,
        run_seconds=template.run_seconds, template_id=template_id,
    )


def _template_shape(sandboxes: Sandboxes, source: Sandbox, key: str) -> Template:
    """What a fork's copies are made with: the source's own settings."""
    return Template(
        template_id=key, source_sandbox_id=source.sandbox_id, kind=source.kind,
        language=source.language, limits=source.limits, created_at=sandboxes.clock(),
        size_bytes=0, identity=(), env=source.env, package_dirs=source.package_dirs,
        network_allow=source.network_allow, idle_timeout_s=source.idle_timeout_s,
    )


def _named(language: Language | None) -> str:
    return language.value if language is not None else "no language"
