"""Use cases. They speak only to ports."""

from __future__ import annotations

import contextlib

import structlog

from sandbox.domain.capacity import Capacity
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.metrics import Metrics, NoMetrics, verdict_of
from sandbox.domain.model import ExecutionResult, Language, Limits, Program, SandboxSpec, Stream
from sandbox.domain.output import OutputCapture, TextListener
from sandbox.domain.ports import SandboxRuntime

log = structlog.get_logger(__name__)


class ExecutionEvents:
    """What a caller that streams wants to hear while a script runs. The default hears nothing."""

    async def started(self, sandbox_id: str) -> None:
        return None

    async def output(self, stream: Stream, text: str) -> None:
        return None


async def execute_script(
    runtime: SandboxRuntime,
    language: Language,
    source: bytes,
    limits: Limits,
    events: ExecutionEvents | None = None,
    package_dirs: tuple[str, ...] = (),
    *,
    capacity: Capacity | None = None,
    metrics: Metrics | None = None,
    network_allow: tuple[str, ...] = (),
) -> ExecutionResult:
    """Run a script in a fresh sandbox that is gone afterwards, and return its result.

    With `capacity`, waits (boundedly) for a place first: AtCapacity is raised before
    `events.started`, and the place is freed as soon as the sandbox has ended, even while a
    slow listener still holds its last output."""
    events = events or ExecutionEvents()
    metrics = metrics or NoMetrics()
    sandbox_id = new_sandbox_id()
    listener: TextListener = events.output
    capture = OutputCapture(limits.output_bytes, listener)
    admitted: contextlib.AbstractAsyncContextManager[None] = (
        capacity.execution(limits.memory_mb) if capacity else contextlib.nullcontext()
    )
    async with admitted:
        structlog.contextvars.bind_contextvars(sandbox_id=sandbox_id)
        await events.started(sandbox_id)
        log.info("execution.started", language=language.value, timeout_s=limits.timeout_s,
                 memory_mb=limits.memory_mb, script_bytes=len(source))
        outcome = await runtime.run(
            SandboxSpec(sandbox_id=sandbox_id, limits=limits, package_dirs=package_dirs,
                        network_allow=network_allow),
            Program.script(language, source),
            capture,
        )
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
