"""Work in a running sandbox: execs and file calls. Suspend waits for none of them but refuses
while one is at work; delete does not wait, and a call broken by it is told as what happened.
The work runs where the sandbox runs: a call that reached another instance brings it here
first (handoff.ensure_here)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator

import structlog

from sandbox.domain.errors import InvalidState, LeaseLost, RuntimeFailure, SandboxNotFound
from sandbox.domain.ids import checked_sandbox_id
from sandbox.domain.lifecycle.handoff import deadline_for, ensure_here, hand_off, resumable, spawn
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.metrics import verdict_of
from sandbox.domain.model import ExecutionResult, FileEntry, Program, Sandbox, SandboxState, Stream
from sandbox.domain.output import ExecutionEvents, OutputCapture
from sandbox.domain.ports import OpenedFile

log = structlog.get_logger(__name__)


async def exec_in_sandbox(
    sandboxes: Sandboxes,
    sandbox_id: str,
    program: Program,
    stdin: bytes,
    timeout_s: float | None,
    events: ExecutionEvents | None = None,
) -> ExecutionResult:
    """Run a program in the sandbox; `timeout_s` None is the sandbox's own per-exec limit."""
    events = events or ExecutionEvents()
    async with working(sandboxes, sandbox_id, "exec in") as sandbox:
        capture = OutputCapture(sandbox.limits.output_bytes, events.output)
        await events.started(sandbox.sandbox_id)
        outcome = await sandboxes.runtime.exec(
            sandbox.sandbox_id, program, capture, stdin, timeout_s or sandbox.limits.timeout_s
        )
        await capture.close()
    sandboxes.metrics.execution_finished("exec", verdict_of(outcome),
                                         outcome.duration_ms / 1000)
    language = program.language.value if program.language else "argv"
    log.info("sandbox.exec_finished", exit_code=outcome.exit_code,
             timed_out=outcome.timed_out, duration_ms=outcome.duration_ms)
    return ExecutionResult(
        sandbox_id=sandbox.sandbox_id, language=language, outcome=outcome,
        stdout=capture.captured(Stream.STDOUT), stderr=capture.captured(Stream.STDERR),
    )


async def write_file(
    sandboxes: Sandboxes, sandbox_id: str, path: str, chunks: AsyncIterable[bytes]
) -> int:
    """Write a file from chunks as they arrive; whole or not at all (see the port)."""
    async with working(sandboxes, sandbox_id, "write files in") as sandbox:
        return await sandboxes.runtime.write_file(sandbox.sandbox_id, path, chunks)


@contextlib.asynccontextmanager
async def read_file(
    sandboxes: Sandboxes, sandbox_id: str, path: str
) -> AsyncIterator[OpenedFile]:
    """The file opened for reading; the sandbox is busy (and holds its call's place) until
    it is closed."""
    async with working(sandboxes, sandbox_id, "read files in") as sandbox, \
            sandboxes.runtime.read_file(sandbox.sandbox_id, path,
                                        sandboxes.policy.max_file_bytes) as opened:
        yield opened


async def list_files(sandboxes: Sandboxes, sandbox_id: str, path: str) -> list[FileEntry]:
    async with working(sandboxes, sandbox_id, "list files in") as sandbox:
        return await sandboxes.runtime.list_files(sandbox.sandbox_id, path)


@contextlib.asynccontextmanager
async def working(sandboxes: Sandboxes, sandbox_id: str, verb: str) -> AsyncIterator[Sandbox]:
    """A place among the calls at once (a bounded wait, then AtCapacity), then the work; the
    place is given back however the work ends."""
    # An unknown or stopped sandbox is told at once, not after a wait for a place.
    if not resumable(await sandboxes.get(sandbox_id)):
        await sandboxes.require(sandbox_id, SandboxState.RUNNING, verb)
    async with sandboxes.capacity.call():
        sandbox = await _begin(sandboxes, sandbox_id, verb)
        try:
            yield sandbox
        except RuntimeFailure:
            await _tell_what_happened(sandboxes, sandbox_id)
            raise
        finally:
            await _end(sandboxes, sandbox.sandbox_id)


async def _tell_what_happened(sandboxes: Sandboxes, sandbox_id: str) -> None:
    """A runtime failure caused by a delete, or by the end of the sandbox meanwhile (out of
    memory, say), is told as that, not as a broken runtime."""
    current = await sandboxes.store.get(sandbox_id)
    if current is None:
        raise SandboxNotFound(f"sandbox {sandbox_id} was deleted while in use") from None
    if current.state is not SandboxState.RUNNING:
        raise InvalidState(
            f"sandbox {sandbox_id} became {current.state.value} while in use"
        ) from None


async def _begin(sandboxes: Sandboxes, sandbox_id: str, verb: str) -> Sandbox:
    # No activity is recorded here: while work runs the reaper leaves the sandbox alone
    # (see `busy`), and its idle time counts from when the work ends.
    deadline = deadline_for(sandboxes)
    while True:
        await ensure_here(sandboxes, sandbox_id, deadline)
        async with sandboxes.lock(checked_sandbox_id(sandbox_id)):
            # Handed off while this call waited for the lock: it is no longer running here.
            if not resumable(await sandboxes.get(sandbox_id)):
                sandbox = await sandboxes.require(sandbox_id, SandboxState.RUNNING, verb)
                if sandboxes.ownership.holds(sandbox_id):
                    sandboxes.busy[sandbox.sandbox_id] += 1
                    return sandbox
        # Handed to another instance between the two: bring it back, within the deadline.


async def _end(sandboxes: Sandboxes, sandbox_id: str) -> None:
    sandboxes.busy[sandbox_id] -= 1
    if sandboxes.busy[sandbox_id] <= 0:
        del sandboxes.busy[sandbox_id]
    async with sandboxes.lock(sandbox_id):
        sandbox = await sandboxes.store.get(sandbox_id)
        if sandbox is not None and sandboxes.ownership.holds(sandbox_id):
            # Refused when another instance took it over meanwhile: its container here is
            # ended then, and the call that just finished keeps its answer.
            with contextlib.suppress(LeaseLost):
                await sandboxes.touch(sandbox)
    if sandbox is None:
        sandboxes.forget(sandbox_id)
    elif sandbox_id in sandboxes.wanted and not sandboxes.busy[sandbox_id]:
        spawn(sandboxes, hand_off(sandboxes, sandbox_id))  # another instance asked for it
