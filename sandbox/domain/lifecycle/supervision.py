"""A task per running sandbox waits for its init to end and records how, unless the sandbox
was suspended or deleted meanwhile.

Whatever the supervisor meets (the runtime failing, the output log unable to keep output,
a full disk) the sandbox ends: it is recorded with a state and a reason, its memory is given
back to the capacity, its lease released, and the error is logged with the sandbox's id. A
store that cannot be reached is waited for (the record is written once it is back), unless
the lease runs out meanwhile: then whoever takes the sandbox over records it. Only a
cancellation (the server stopping) leaves the record as it is, for the next start's
reconcile (or, on a shared store, for the instance that finds its lease expired).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from sandbox.domain.errors import StoreUnavailable
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Sandbox, SandboxKind, SandboxState, Stream
from sandbox.domain.ports import OutputSink
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)

# How often an end that could not be recorded (the store unreachable) is tried again.
RECORD_RETRY_S = 1.0


class WatchedSink(OutputSink):
    """The output log's sink for one run of a sandbox. Its first failure is kept for the
    supervisor, which ends the sandbox, instead of reaching the runtime, which would stop
    draining the sandbox's output; what arrives after it is dropped."""

    def __init__(self, sink: OutputSink) -> None:
        self._sink = sink
        self.failed = asyncio.Event()
        self.error: Exception | None = None

    async def write(self, stream: Stream, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            await self._sink.write(stream, data)
        except Exception as error:
            self.error = error
            self.failed.set()


def output_sink(sandboxes: Sandboxes, sandbox: Sandbox) -> WatchedSink:
    return WatchedSink(sandboxes.outputs.sink(sandbox.sandbox_id, sandbox.limits.output_bytes))


def supervise(sandboxes: Sandboxes, sandbox: Sandbox, sink: WatchedSink) -> None:
    task = asyncio.create_task(_watch(sandboxes, sandbox, sink))
    sandboxes.supervisors[sandbox.sandbox_id] = task

    def forget(done: asyncio.Task[None]) -> None:
        if sandboxes.supervisors.get(sandbox.sandbox_id) is done:
            del sandboxes.supervisors[sandbox.sandbox_id]

    task.add_done_callback(forget)


@dataclass(frozen=True)
class _Ending:
    state: SandboxState
    reason: Reason
    exit_code: int | None = None


async def _watch(sandboxes: Sandboxes, sandbox: Sandbox, sink: WatchedSink) -> None:
    sandbox_id = sandbox.sandbox_id
    try:
        ending = await _ending(sandboxes, sandbox, sink)
    except Exception as error:
        log.error("sandbox.supervision_failed", sandbox_id=sandbox_id, detail=str(error),
                  exc_info=True)
        ending = _Ending(SandboxState.FAILED, Reason.of(ReasonCode.SUPERVISION_FAILED))
    while True:
        try:
            await _record(sandboxes, sandbox, ending)
            return
        except StoreUnavailable as error:
            log.warning("sandbox.record_delayed", sandbox_id=sandbox_id, detail=error.message)
            await asyncio.sleep(RECORD_RETRY_S)
        except Exception:
            log.exception("sandbox.supervisor_failed", sandbox_id=sandbox_id)
            return


async def _ending(sandboxes: Sandboxes, sandbox: Sandbox, sink: WatchedSink) -> _Ending:
    """How the sandbox ended: its init's end, its time limit, or its output failing. A
    detached script's time limit counts only the time it ran (not while suspended)."""
    budget = None
    if sandbox.kind is SandboxKind.SCRIPT:
        budget = max(sandbox.limits.timeout_s - sandbox.run_seconds, 0.0)
    waiting = asyncio.ensure_future(sandboxes.runtime.wait(sandbox.sandbox_id))
    failing = asyncio.ensure_future(sink.failed.wait())
    try:
        done, _ = await asyncio.wait({waiting, failing}, timeout=budget,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, failing):
            task.cancel()
        await asyncio.gather(waiting, failing, return_exceptions=True)
    if sink.error is not None:
        log.error("sandbox.output_failed", sandbox_id=sandbox.sandbox_id,
                  detail=str(sink.error))
        return _Ending(SandboxState.FAILED, Reason.of(ReasonCode.OUTPUT_FAILED))
    if waiting not in done:
        return _Ending(SandboxState.EXITED,
                       Reason.of(ReasonCode.TIMED_OUT, seconds=sandbox.limits.timeout_s))
    outcome = waiting.result()
    if outcome.failure is not None:
        log.error("sandbox.runtime_failed", sandbox_id=sandbox.sandbox_id,
                  detail=outcome.failure)
        return _Ending(SandboxState.FAILED, Reason.of(ReasonCode.AGENT_FAILED))
    if outcome.oom_killed:
        return _Ending(SandboxState.EXITED, Reason.of(ReasonCode.OUT_OF_MEMORY),
                       outcome.exit_code)
    if outcome.exit_code is None:
        return _Ending(SandboxState.EXITED, Reason.of(ReasonCode.VANISHED))
    return _Ending(SandboxState.EXITED,
                   Reason.of(ReasonCode.EXITED, exit_code=outcome.exit_code), outcome.exit_code)


async def _record(sandboxes: Sandboxes, sandbox: Sandbox, ending: _Ending) -> None:
    sandbox_id = sandbox.sandbox_id
    async with sandboxes.lock(sandbox_id):
        if not sandboxes.ownership.holds(sandbox_id):
            return  # suspended, handed off, deleted, or taken over: recorded by that
        current = await sandboxes.store.get(sandbox_id)
        if current is None:  # deleted on another instance meanwhile
            await _destroy(sandboxes, sandbox_id)
            sandboxes.capacity.release(sandbox_id)
            await sandboxes.ownership.release(sandbox_id)
            return
        if current.state is not SandboxState.RUNNING:
            return  # suspended or deleted meanwhile: that call recorded it
        if current.running_since != sandbox.running_since:
            return  # a later run of the same sandbox has its own supervisor
        try:
            await _destroy(sandboxes, sandbox_id)
            now = sandboxes.clock()
            await sandboxes.save(
                current, ending.state, ending.reason, exit_code=ending.exit_code,
                run_seconds=current.run_seconds + now - (current.running_since or now),
                running_since=None,
            )
        finally:
            sandboxes.capacity.release(sandbox_id)
        await sandboxes.ownership.release(sandbox_id)
    if ending.state is SandboxState.EXITED:
        log.info("sandbox.exited", sandbox_id=sandbox.sandbox_id, exit_code=ending.exit_code,
                 reason_code=ending.reason.code)
    else:
        log.warning("sandbox.failed", sandbox_id=sandbox.sandbox_id,
                    reason_code=ending.reason.code)


async def _destroy(sandboxes: Sandboxes, sandbox_id: str) -> None:
    """Whatever the runtime left is removed; if it cannot be, the end is recorded all the
    same (a delete, or the next start's reconcile, tries again)."""
    try:
        await sandboxes.runtime.destroy(sandbox_id)
    except Exception:
        log.exception("sandbox.destroy_failed", sandbox_id=sandbox_id)
