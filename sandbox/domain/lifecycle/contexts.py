"""Code contexts: persistent interpreters in a running sandbox, and the cells run in them.

Every call is work in the sandbox (see work.py): it needs the sandbox running, holds a place
among the calls at once, and a running cell keeps the sandbox busy, so it is not suspended
under the cell. The contexts themselves are processes the sandbox keeps: they are suspended
and restored with it, variables and all.
"""

from __future__ import annotations

import structlog

from sandbox.domain.cell_capture import CellCapture, CellListener
from sandbox.domain.cells import CellLimits, CellRun, CodeContext
from sandbox.domain.errors import InvalidRequest, InvalidState
from sandbox.domain.ids import checked_context_id, checked_sandbox_id, new_context_id
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.work import working
from sandbox.domain.metrics import Verdict
from sandbox.domain.model import Language

log = structlog.get_logger(__name__)

# The languages a context can be made in (a Bash context would need a shell protocol of its
# own to tell where a cell ends and how it ended).
CONTEXT_LANGUAGES = (Language.PYTHON,)


async def create_context(sandboxes: Sandboxes, sandbox_id: str, language: Language) -> CodeContext:
    if language not in CONTEXT_LANGUAGES:
        raise InvalidRequest(f"contexts run {', '.join(CONTEXT_LANGUAGES)}, not {language}")
    async with working(sandboxes, sandbox_id, "start a context in") as sandbox, \
            sandboxes.context_lock(checked_sandbox_id(sandbox_id)):
        existing = await sandboxes.runtime.list_contexts(sandbox.sandbox_id)
        if len(existing) >= sandboxes.policy.max_contexts:
            raise InvalidState(
                f"the sandbox has {len(existing)} contexts, the most it may have; "
                "delete one first"
            )
        context = CodeContext(new_context_id(), language, sandboxes.clock())
        await sandboxes.runtime.start_context(sandbox.sandbox_id, context)
    log.info("context.started", sandbox_id=sandbox.sandbox_id, context_id=context.context_id,
             language=language.value)
    return context


async def list_contexts(sandboxes: Sandboxes, sandbox_id: str) -> list[CodeContext]:
    async with working(sandboxes, sandbox_id, "list the contexts of") as sandbox:
        return await sandboxes.runtime.list_contexts(sandbox.sandbox_id)


async def run_cell(
    sandboxes: Sandboxes,
    sandbox_id: str,
    context_id: str,
    code: str,
    timeout_s: float | None,
    listener: CellListener | None = None,
) -> CellRun:
    """Run one cell; `timeout_s` None is the sandbox's own per-exec limit."""
    async with working(sandboxes, sandbox_id, "run a cell in") as sandbox:
        checked_context_id(context_id)
        limits = CellLimits(timeout_s=timeout_s or sandbox.limits.timeout_s,
                            output_bytes=sandbox.limits.output_bytes,
                            result_bytes=sandboxes.policy.cell_result_bytes)
        capture = CellCapture(sandbox.sandbox_id, context_id, limits, listener)
        outcome = await sandboxes.runtime.run_cell(sandbox.sandbox_id, context_id, code, limits,
                                                   capture)
        run = await capture.finish(outcome)
    sandboxes.metrics.execution_finished("cell", _verdict(run), outcome.duration_ms / 1000)
    log.info("context.cell_finished", context_id=context_id,
             execution_count=outcome.execution_count, timed_out=outcome.timed_out,
             restarted=outcome.restarted, error=run.error.name if run.error else None,
             duration_ms=outcome.duration_ms)
    return run


async def interrupt_context(sandboxes: Sandboxes, sandbox_id: str, context_id: str) -> None:
    async with working(sandboxes, sandbox_id, "interrupt a context in") as sandbox:
        checked_context_id(context_id)
        await sandboxes.runtime.interrupt_context(sandbox.sandbox_id, context_id)


async def restart_context(sandboxes: Sandboxes, sandbox_id: str, context_id: str) -> None:
    async with working(sandboxes, sandbox_id, "restart a context in") as sandbox:
        checked_context_id(context_id)
        await sandboxes.runtime.restart_context(sandbox.sandbox_id, context_id)
    log.info("context.restarted", context_id=context_id)


async def delete_context(sandboxes: Sandboxes, sandbox_id: str, context_id: str) -> None:
    async with working(sandboxes, sandbox_id, "delete a context in") as sandbox:
        checked_context_id(context_id)
        await sandboxes.runtime.stop_context(sandbox.sandbox_id, context_id)
    log.info("context.deleted", context_id=context_id)


def _verdict(run: CellRun) -> Verdict:
    if run.outcome.timed_out:
        return "timed_out"
    return "failed" if run.error is not None else "ok"
