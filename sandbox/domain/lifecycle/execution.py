"""Executing a script in a fresh sandbox that is gone afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import structlog

from sandbox.domain.capacity import Capacity
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.metrics import Metrics, NoMetrics, verdict_of
from sandbox.domain.model import (
    ExecutionResult,
    Language,
    Limits,
    Outcome,
    Program,
    SandboxSpec,
    Stream,
)
from sandbox.domain.output import ExecutionEvents, OutputCapture
from sandbox.domain.ports import SandboxRuntime
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
) -> ExecutionResult:
    """The run itself: in a warm sandbox from `pool` when one fits, else in one started for
    it. With `capacity`, waits (boundedly) for a place first: AtCapacity is raised before
    `events.started`, and the place is freed as soon as the sandbox has ended, even while a
    slow listener still holds its last output. A warm sandbox brings its own memory."""
    events = events or ExecutionEvents()
    metrics = metrics or NoMetrics()
    lease = pool.take(language, limits, package_dirs) if pool is not None else None
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
                network_allow=network_allow,
            ), Program.script(language, source), capture)
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


async def _run(
    runtime: SandboxRuntime,
    pool: WarmPool | None,
    lease: WarmLease | None,
    spec: SandboxSpec,
    program: Program,
    capture: OutputCapture,
) -> Outcome:
    if pool is not None and lease is not None:
        return await pool.run(lease, program, capture, spec.limits.timeout_s)
    return await runtime.run(spec, program, capture)
