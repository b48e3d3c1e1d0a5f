"""A cell as NDJSON: `start` once it is admitted, then `stdout`/`stderr` as output arrives and
`result` (a MIME bundle, its flags beside it) as each is made, `error` (the exception the
cell ended with), and last `end` (the answer's summary); or, when the service itself fails
after the start, `error` with `{"error": {"code", "message"}}`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sandbox.domain.cell_capture import CellListener
from sandbox.domain.cells import CellError, CellResult, CellRun
from sandbox.domain.model import Stream
from sandbox.entrypoints.streaming import Emitter, Event, EventStream

Cell = Callable[[CellListener], Awaitable[CellRun]]


class _EmittedCell(CellListener):
    def __init__(self, emitter: Emitter) -> None:
        self._emitter = emitter

    async def started(self, sandbox_id: str, context_id: str) -> None:
        await self._emitter.emit({"type": "start", "sandbox_id": sandbox_id,
                                  "context_id": context_id})

    async def output(self, stream: Stream, text: str) -> None:
        await self._emitter.emit({"type": stream.value, "data": text})

    async def result(self, result: CellResult) -> None:
        await self._emitter.emit({"type": "result", **result.to_dict()})

    async def error(self, error: CellError) -> None:
        await self._emitter.emit({"type": "error", **error.to_dict()})


class CellStream(EventStream):
    def __init__(self, cell: Cell) -> None:
        async def produce(emitter: Emitter) -> Event:
            run = await cell(_EmittedCell(emitter))
            return {"type": "end", **run.summary()}

        super().__init__(produce)
