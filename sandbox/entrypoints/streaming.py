"""Work as NDJSON events: an execution's `start`, `stdout`/`stderr` as output arrives, then
`exit` or `error`; a cell's likewise (see cell_streaming.py).

The answer starts only with the first event: work refused before it started (at capacity,
wrong state) is a plain error answer with its status, not a 200 with an error event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from sandbox.domain.errors import SandboxError
from sandbox.domain.model import ExecutionResult, Stream
from sandbox.domain.output import ExecutionEvents
from sandbox.entrypoints.disconnect import unless_client_leaves
from sandbox.entrypoints.errors import INTERNAL_MESSAGE, public_error

log = structlog.get_logger(__name__)

Event = dict[str, object]
Execution = Callable[[ExecutionEvents], Awaitable[ExecutionResult]]

# Events held for a client that reads slowly. When full the execution waits for the client;
# the sandbox's own timeout still ends it, so a client that never reads cannot pin it.
QUEUE_EVENTS = 256


def ndjson_line(event: Event) -> bytes:
    """One event of an `application/x-ndjson` answer."""
    return json.dumps(event, ensure_ascii=False).encode() + b"\n"


class Emitter:
    """Where a producer puts its events; the first one starts the answer."""

    def __init__(self, queue: asyncio.Queue[Event | None]) -> None:
        self._queue = queue
        self.has_started = False

    async def emit(self, event: Event) -> None:
        self.has_started = True
        await self._queue.put(event)


# Emits the events of some work as it goes, and returns the last one (its summary).
Producer = Callable[[Emitter], Awaitable[Event]]


class _QueuedEvents(ExecutionEvents):
    def __init__(self, emitter: Emitter) -> None:
        self._emitter = emitter

    async def started(self, sandbox_id: str) -> None:
        await self._emitter.emit({"type": "start", "sandbox_id": sandbox_id})

    async def output(self, stream: Stream, text: str) -> None:
        await self._emitter.emit({"type": stream.value, "data": text})


class EventStream(StreamingResponse):
    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=QUEUE_EVENTS)
        self._first: Event | None = None
        self._refusal: SandboxError | None = None
        super().__init__(self._lines(), media_type="application/x-ndjson")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The work runs as its own task, owned here rather than by the body generator, so
        # that however the response ends (done, client gone, error) it is ended and awaited.
        producer = asyncio.create_task(self._produce())
        try:
            # Admission may wait for room: a client that leaves meanwhile ends it too.
            self._first = await unless_client_leaves(receive, self._queue.get())
            if self._refusal is not None:
                raise self._refusal  # answered by the exception handlers, as without stream
            await super().__call__(scope, receive, send)
        finally:
            producer.cancel()  # when the client left early: the runtime ends the work
            await asyncio.wait({producer})

    async def _lines(self) -> AsyncIterator[bytes]:
        event = self._first
        while event is not None:
            yield ndjson_line(event)
            event = await self._queue.get()

    async def _produce(self) -> None:
        final: Event
        emitter = Emitter(self._queue)
        try:
            final = await self._producer(emitter)
        except asyncio.CancelledError:
            log.info("execution.cancelled")  # the response ended first: the client left
            raise
        except SandboxError as error:
            if not emitter.has_started:
                self._refusal = error
                await self._queue.put(None)
                return
            log.warning("execution.failed", code=error.code)
            final = {"type": "error", "error": public_error(error)}
        except Exception:
            log.exception("execution.crashed")
            final = {"type": "error", "error": {"code": "internal", "message": INTERNAL_MESSAGE}}
        await self._queue.put(final)
        await self._queue.put(None)


class ExecutionStream(EventStream):
    """A script or an exec: `start`, its output, then `exit`."""

    def __init__(self, execution: Execution) -> None:
        async def produce(emitter: Emitter) -> Event:
            result = await execution(_QueuedEvents(emitter))
            return {"type": "exit", **result.summary()}

        super().__init__(produce)
