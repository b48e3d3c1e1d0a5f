"""The code contexts of one sandbox on runsc: each an interpreter (inside/kernel.py) that the
agent started as its child, so that it is checkpointed and restored with the sandbox, and
labelled with the context it serves, so that it is found again after a restore.

A context's requests go to the interpreter's stdin; its frames come back on its stdout, in
the agent's OUT frames for its tag, and are decoded strictly (kernel_frames.py): one that
breaks the protocol is killed, and so is one that does not stop when a timed-out cell is
interrupted. Either is then started afresh, and the cell's outcome says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from sandbox.adapters.runsc import oci
from sandbox.adapters.runsc.agent_channel import AgentChannel, AgentError
from sandbox.adapters.runsc.agent_frames import LiveProcess
from sandbox.adapters.runsc.inside import kernel_layout as layout
from sandbox.adapters.runsc.kernel_sink import Cell, KernelSink
from sandbox.domain.cells import CellLimits, CellOutcome, CodeContext
from sandbox.domain.errors import ContextNotFound, InvalidState, RuntimeFailure
from sandbox.domain.model import Language
from sandbox.domain.ports import CellSink

log = structlog.get_logger(__name__)

KERNEL_ARGV = ["python3", f"{oci.AGENT_DIR}/kernel.py"]
# Starting IPython inside gVisor takes 0.3 to 0.8 s; a busy host, several.
START_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 30.0
# A timed-out cell is interrupted; one still running this long after is ended with its
# interpreter, which is started afresh.
INTERRUPT_GRACE_S = 3.0
# A kernel's group killed by the agent: a fork bomb on a busy host takes seconds to empty.
KILL_GRACE_S = 20.0
_LABEL = re.compile(rb"\Acontext (python) ([0-9a-f]{16}) ([0-9]{1,12})\Z")
Waited = Literal["ended", "died", "timeout"]


def label_of(context: CodeContext) -> bytes:
    return f"context {context.language.value} {context.context_id} "\
           f"{int(context.created_at)}".encode()


def context_of(label: bytes) -> CodeContext | None:
    found = _LABEL.match(label)
    if found is None:
        return None
    language, context_id, created = (part.decode() for part in found.groups())
    return CodeContext(context_id, Language(language), float(created))


@dataclass
class Kernel:
    """One incarnation of a context's interpreter."""

    context: CodeContext
    tag: int
    sink: KernelSink
    exited: asyncio.Task[int]
    running: bool = False
    killed: bool = False
    # Set when the service ends it on purpose (restart, delete): what a running cell is told.
    ended_by: str | None = None

    def why_ended(self) -> str:
        if self.ended_by is not None:
            return self.ended_by
        if self.sink.broken is not None:
            return f"broke its protocol ({self.sink.broken}) and was ended"
        if self.exited.done() and not self.exited.cancelled() and \
                self.exited.exception() is None:
            code = self.exited.result()
            if code > 128:
                return f"was killed by signal {code - 128}"
            return f"exited with code {code}"
        return "ended"


class Kernels:
    def __init__(self, sandbox_id: str, channel: AgentChannel, env: list[str],
                 on_stuck: Callable[[], Awaitable[None]]) -> None:
        self.sandbox_id = sandbox_id
        self.channel = channel
        self.env = env
        self.on_stuck = on_stuck
        self.by_id: dict[str, Kernel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()

    # Starting, finding again, ending ---------------------------------------------------

    async def start(self, context: CodeContext) -> None:
        self.by_id[context.context_id] = await self._spawn(context)

    def adopt(self, tag: int, process: LiveProcess) -> bool:
        """After a restore: take back an interpreter the agent still runs (idle: no cell
        runs while a sandbox is suspended). False when it is no context's."""
        context = context_of(process.label)
        if context is None:
            return False
        if context.context_id in self.by_id:  # told twice: the second is not ours
            self.channel.kill(tag)
            return True
        sink = KernelSink(context.context_id, ready=True)
        self.channel.adopt(tag, sink)
        self.by_id[context.context_id] = self._track(context, tag, sink)
        return True

    def listed(self) -> list[CodeContext]:
        return sorted((kernel.context for kernel in self.by_id.values()),
                      key=lambda context: (context.created_at, context.context_id))

    async def restart(self, context_id: str) -> None:
        kernel = self._kernel(context_id)
        kernel.ended_by = "was restarted while the cell ran"
        await self._replace(kernel)

    async def stop(self, context_id: str) -> None:
        async with self._lock(context_id):
            kernel = self._kernel(context_id)
            del self.by_id[context_id]
            kernel.ended_by = "ended: the context was deleted while the cell ran"
            await self._end(kernel)
        self._locks.pop(context_id, None)

    def interrupt(self, context_id: str) -> None:
        kernel = self._kernel(context_id)
        if kernel.sink.cell is not None:
            self.channel.signal(kernel.tag, int(signal.SIGINT))

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _kernel(self, context_id: str) -> Kernel:
        kernel = self.by_id.get(context_id)
        if kernel is None:
            raise ContextNotFound(f"no context with id {context_id!r} in this sandbox")
        return kernel

    def _lock(self, context_id: str) -> asyncio.Lock:
        return self._locks.setdefault(context_id, asyncio.Lock())

    async def _spawn(self, context: CodeContext) -> Kernel:
        sink = KernelSink(context.context_id)
        try:
            tag = await self.channel.spawn(KERNEL_ARGV, self.env, oci.WORKDIR, sink,
                                           ANSWER_TIMEOUT_S, stdin=True,
                                           label=label_of(context))
        except AgentError as refused:
            raise _not_started(refused.message) from None
        kernel = self._track(context, tag, sink)
        try:
            await self._until_ready(kernel)
        except BaseException:
            await asyncio.shield(self._end(kernel))
            raise
        return kernel

    def _track(self, context: CodeContext, tag: int, sink: KernelSink) -> Kernel:
        exited = asyncio.create_task(self.channel.wait(tag))
        exited.add_done_callback(_quietly)
        kernel = Kernel(context, tag, sink, exited)
        sink.on_broken = lambda: self._kill(kernel)
        return kernel

    def _kill(self, kernel: Kernel) -> None:
        if not kernel.killed:
            kernel.killed = True
            self.channel.kill(kernel.tag)

    async def _until_ready(self, kernel: Kernel) -> None:
        ready, failed = _event_task(kernel.sink.ready), _event_task(kernel.sink.failed)
        waiters: set[asyncio.Future[Any]] = {ready, kernel.exited, failed}
        try:
            await asyncio.wait(waiters, timeout=START_TIMEOUT_S,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            failed.cancel()
        if kernel.sink.ready.is_set() and not kernel.exited.done():
            return
        self._raise_if_sandbox_broken()
        words = kernel.sink.last_words.decode("utf-8", "replace").strip()
        why = kernel.why_ended() if kernel.exited.done() or kernel.sink.broken else \
            f"was not ready within {START_TIMEOUT_S:g} s"
        raise _not_started(f"it {why}" + (f": {words[-500:]}" if words else ""))

    async def _end(self, kernel: Kernel) -> None:
        """Kill the interpreter's process group and wait for its end (boundedly: one that
        cannot be ended is the sandbox's end)."""
        if kernel.exited.done():
            return
        self._kill(kernel)
        try:
            async with asyncio.timeout(KILL_GRACE_S):
                await asyncio.wait({kernel.exited})
        except TimeoutError:
            log.error("context.kill_failed", sandbox_id=self.sandbox_id,
                      context_id=kernel.context.context_id)
            await self.on_stuck()

    async def _replace(self, kernel: Kernel) -> bool:
        """End this incarnation and start the next; False when another call already did (or
        the context was deleted)."""
        context_id = kernel.context.context_id
        async with self._lock(context_id):
            if self.by_id.get(context_id) is not kernel:
                return False
            await self._end(kernel)
            self._raise_if_sandbox_broken()
            self.by_id[context_id] = await self._spawn(kernel.context)
            return True

    def _raise_if_sandbox_broken(self) -> None:
        if self.channel.broken is not None:
            raise RuntimeFailure(f"the sandbox's agent is unusable: {self.channel.broken}")

    # Cells ------------------------------------------------------------------------------

    async def run(self, context_id: str, code: str, limits: CellLimits,
                  sink: CellSink) -> CellOutcome:
        kernel = self._kernel(context_id)
        if kernel.running:
            raise InvalidState("a cell is running in this context; interrupt it or wait")
        kernel.running = True
        started = time.monotonic()
        cell = Cell(secrets.randbits(63) | 1, sink, limits.result_bytes)
        try:
            await sink.started()
            outcome = await self._outcome(kernel, cell, code, limits)
        except asyncio.CancelledError:
            # The caller left: the cell is interrupted (or its interpreter restarted) behind
            # it, and the context stays busy until then.
            self._behind(self._abandoned(kernel, cell))
            raise
        except BaseException:
            kernel.running = False
            raise
        kernel.running = False
        return dataclasses.replace(outcome, duration_ms=_ms_since(started))

    async def _outcome(self, kernel: Kernel, cell: Cell, code: str,
                       limits: CellLimits) -> CellOutcome:
        if kernel.exited.done() or kernel.sink.broken is not None:
            why = kernel.why_ended()
            await self._replace(kernel)
            return CellOutcome(None, restarted=True,
                               ended=f"had {_past(why)} before this cell, which was not run")
        kernel.sink.cell = cell
        await self.channel.send_input(kernel.tag, _request(cell, code, limits))
        waited = await self._wait(kernel, cell, limits.timeout_s)
        if waited == "timeout":
            return await self._interrupted(kernel, cell)
        if waited == "died":
            return await self._died(kernel)
        kernel.sink.cell = None
        end = cell.ended.result()
        return CellOutcome(end.execution_count, results_truncated=end.results_truncated)

    async def _wait(self, kernel: Kernel, cell: Cell, timeout_s: float) -> Waited:
        failed = _event_task(kernel.sink.failed)
        waiters: set[asyncio.Future[Any]] = {cell.ended, kernel.exited, failed}
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
        if cell.ended.done():
            return "ended"
        if kernel.exited.done() or kernel.sink.broken is not None:
            return "died"
        return "timeout"

    async def _interrupted(self, kernel: Kernel, cell: Cell) -> CellOutcome:
        self.channel.signal(kernel.tag, int(signal.SIGINT))
        if await self._wait(kernel, cell, INTERRUPT_GRACE_S) == "ended":
            kernel.sink.cell = None
            end = cell.ended.result()
            return CellOutcome(end.execution_count, timed_out=True,
                               results_truncated=end.results_truncated)
        kernel.ended_by = "did not stop when interrupted"
        await self._replace(kernel)
        return CellOutcome(None, timed_out=True, restarted=True)

    async def _died(self, kernel: Kernel) -> CellOutcome:
        why = kernel.why_ended()
        restarted = await self._replace(kernel) or kernel.context.context_id in self.by_id
        return CellOutcome(None, restarted=restarted, ended=why)

    async def _abandoned(self, kernel: Kernel, cell: Cell) -> None:
        try:
            waited = await self._wait(kernel, cell, 0)
            if waited == "timeout" and kernel.sink.cell is cell:
                await self._interrupted(kernel, cell)
            elif waited == "died" or kernel.exited.done():
                await self._replace(kernel)
        except Exception:
            log.exception("context.abandon_failed", context_id=kernel.context.context_id)
        finally:
            kernel.running = False
            if kernel.sink.cell is cell:
                kernel.sink.cell = None

    def _behind(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _request(cell: Cell, code: str, limits: CellLimits) -> bytes:
    body = json.dumps({"op": "run", "cell": cell.token, "code": code,
                       "output_bytes": limits.output_bytes,
                       "result_bytes": limits.result_bytes}, ensure_ascii=False).encode()
    return layout.LENGTH.pack(len(body)) + body


def _not_started(why: str) -> RuntimeFailure:
    message = f"the context's interpreter did not start: {why}"
    return RuntimeFailure(message, public_message=message)


def _past(why: str) -> str:
    """`exited with code 1` as `had exited with code 1` reads; the rest as they are."""
    return re.sub(r"^(was|broke|exited|ended)", lambda found: {
        "was": "been", "broke": "broken", "exited": "exited", "ended": "ended"}[found[1]], why)


def _event_task(event: asyncio.Event) -> asyncio.Task[Literal[True]]:
    return asyncio.create_task(event.wait())


def _quietly(task: asyncio.Task[int]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an interpreter ending with its sandbox is no news


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
