"""Executing a script in a fresh sandbox that is gone afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog

from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import InvalidRequest
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle.restoration import require_identity
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.templates import get_template
from sandbox.domain.metrics import Metrics, NoMetrics, verdict_of
from sandbox.domain.model import (
    ExecutionResult,
    Language,
    Limits,
    Outcome,
    Program,
    SandboxSpec,
    Stream,
    Template,
)
from sandbox.domain.output import ExecutionEvents, OutputCapture
from sandbox.domain.ports import OutputSink, SandboxRuntime
from sandbox.domain.warm_pool import WarmLease, WarmPool

log = structlog.get_logger(__name__)


async def execute_script(
    sandboxes: Sandboxes,
    language: Language,
    source: bytes,
    limits: Limits,
    events: ExecutionEvents | None = None,
    packages: Iterable[str] = (),
    network_allow: tuple[str, ...] = (),
) -> ExecutionResult:
    """Install the script's packages (`packages` and a PEP 723 block), wait (boundedly) for a
    place, run it, and return its result. A refusal (bad packages, AtCapacity) is raised
    before `events.started`."""
    layers = await sandboxes.package_layers(language, source, packages)
    # A pooled sandbox was started without a way out: egress takes the cold path.
    pool = sandboxes.pool if not network_allow else None
    return await run_script(sandboxes.runtime, language, source, limits, events, layers,
                            capacity=sandboxes.capacity, metrics=sandboxes.metrics,
                            pool=pool, network_allow=network_allow)


@dataclass(frozen=True)
class FromTemplate:
    """A script run in a copy of a template (restored under a new id, gone afterwards)."""

    template: Template
    image: Callable[[], Awaitable[str]]


async def execute_from_template(
    sandboxes: Sandboxes,
    template_id: str,
    language: Language | None,
    source: bytes,
    timeout_s: float | None = None,
    events: ExecutionEvents | None = None,
) -> ExecutionResult:
    """Run the script in a copy of the template, as an exec in it would run (the copy's own
    processes run on beside it), with the template's limits (`timeout_s` aside), packages
    and network; `language` defaults to the template's. A warm copy is taken when a pool
    keeps one."""
    template = await get_template(sandboxes, template_id)
    require_identity(sandboxes, template.identity, "the template")
    language = language or template.language
    if language is None:
        raise InvalidRequest("the template has no language: give language=python or bash")
    limits = (template.limits if timeout_s is None
              else dataclasses.replace(template.limits, timeout_s=timeout_s))

    async def image() -> str:
        return await sandboxes.templates.images.local(template_id)

    return await run_script(sandboxes.runtime, language, source, limits, events,
                            template.package_dirs, capacity=sandboxes.capacity,
                            metrics=sandboxes.metrics, pool=sandboxes.pool,
                            network_allow=template.network_allow,
                            template=FromTemplate(template, image))


async def run_script(
    runtime: SandboxRuntime,
    language: Language,
    source: bytes,
    limits: Limits,
    events: ExecutionEvents | None = None,
    package_dirs: tuple[str, ...] = (),
    *,
    capacity: Capacity | None = None,
    metrics: Metrics | None = None,
    pool: WarmPool | None = None,
    network_allow: tuple[str, ...] = (),
    template: FromTemplate | None = None,
) -> ExecutionResult:
    """The run itself: in a warm sandbox from `pool` when one fits, else in one started for
    it (with `template`, a copy of it). With `capacity`, waits (boundedly) for a place
    first: AtCapacity is raised before `events.started`, and the place is freed as soon as
    the sandbox has ended, even while a slow listener still holds its last output. A warm
    sandbox brings its own memory."""
    events = events or ExecutionEvents()
    metrics = metrics or NoMetrics()
    lease = _lease(pool, template, language, limits, package_dirs)
    sandbox_id = lease.sandbox_id if lease is not None else new_sandbox_id()
    capture = OutputCapture(limits.output_bytes, events.output)
    memory_mb = 0 if lease is not None else limits.memory_mb
    admitted: contextlib.AbstractAsyncContextManager[None] = (
        capacity.execution(memory_mb) if capacity else contextlib.nullcontext()
    )
    started = False
    try:
        async with admitted:
            structlog.contextvars.bind_contextvars(sandbox_id=sandbox_id)
            await events.started(sandbox_id)
            log.info("execution.started", language=language.value, timeout_s=limits.timeout_s,
                     memory_mb=limits.memory_mb, script_bytes=len(source),
                     warm=lease is not None)
            started = True
            outcome = await _run(runtime, pool, lease, SandboxSpec(
                sandbox_id=sandbox_id, limits=limits, package_dirs=package_dirs,
                network_allow=network_allow, env=template.template.env if template else (),
            ), Program.script(language, source), capture, template)
    finally:
        if pool is not None and lease is not None and not started:
            pool.give_back(lease)
    metrics.execution_finished("execute", verdict_of(outcome), outcome.duration_ms / 1000)
    await capture.close()
    result = ExecutionResult(
        sandbox_id=sandbox_id,
        language=language.value,
        outcome=outcome,
        stdout=capture.captured(Stream.STDOUT),
        stderr=capture.captured(Stream.STDERR),
    )
    log.info("execution.finished", exit_code=outcome.exit_code, timed_out=outcome.timed_out,
             oom_killed=outcome.oom_killed, duration_ms=outcome.duration_ms,
             stdout_truncated=result.stdout.truncated, stderr_truncated=result.stderr.truncated)
    return result


def _lease(
    pool: WarmPool | None, template: FromTemplate | None, language: Language, limits: Limits,
    package_dirs: tuple[str, ...],
) -> WarmLease | None:
    if pool is None:
        return None
    if template is not None:
        return pool.take_template(template.template.template_id)
    return pool.take(language, limits, package_dirs)


async def _run(
    runtime: SandboxRuntime,
    pool: WarmPool | None,
    lease: WarmLease | None,
    spec: SandboxSpec,
    program: Program,
    capture: OutputCapture,
    template: FromTemplate | None,
) -> Outcome:
    if pool is not None and lease is not None:
        return await pool.run(lease, program, capture, spec.limits.timeout_s)
    if template is not None:
        return await _run_in_copy(runtime, spec, await template.image(), program, capture)
    return await runtime.run(spec, program, capture)


async def _run_in_copy(
    runtime: SandboxRuntime, spec: SandboxSpec, image: str, program: Program,
    sink: OutputSink,
) -> Outcome:
    """Restore a copy of the image, exec the program in it, and destroy the copy, whatever
    happens (cancellation included)."""
    try:
        await runtime.restore(spec, image, _Discard())
        return await runtime.exec(spec.sandbox_id, program, sink, b"", spec.limits.timeout_s)
    finally:
        cleanup = asyncio.ensure_future(runtime.destroy(spec.sandbox_id))
        try:
            await asyncio.shield(cleanup)
        except asyncio.CancelledError:
            await cleanup
            raise


class _Discard(OutputSink):
    """The copy's own processes' output (a detached script's, say): nobody asked for it."""

    async def write(self, stream: Stream, data: bytes) -> None:
        return None
