"""What a cell makes, kept for its answer: output capped per stream, results within the cell's
cap (then flagged), and its exception, told last so that a timeout can be said instead."""

from __future__ import annotations

from sandbox.domain.cells import CellError, CellLimits, CellOutcome, CellResult, CellRun
from sandbox.domain.model import Stream
from sandbox.domain.output import OutputCapture
from sandbox.domain.ports import CellSink


class CellListener:
    """What a caller that streams wants to hear while a cell runs. The default hears nothing."""

    async def started(self, sandbox_id: str, context_id: str) -> None:
        return None

    async def output(self, stream: Stream, text: str) -> None:
        return None

    async def result(self, result: CellResult) -> None:
        return None

    async def error(self, error: CellError) -> None:
        return None


class CellCapture(CellSink):
    def __init__(self, sandbox_id: str, context_id: str, limits: CellLimits,
                 listener: CellListener | None = None) -> None:
        self._ids = sandbox_id, context_id
        self.listener = listener or CellListener()
        self._output = OutputCapture(limits.output_bytes, self.listener.output)
        self._limits = limits
        self._room = limits.result_bytes
        self._results: list[CellResult] = []
        self._results_truncated = False
        self._error: CellError | None = None

    async def started(self) -> None:
        await self.listener.started(*self._ids)

    async def output(self, stream: Stream, data: bytes) -> None:
        await self._output.write(stream, data)

    async def result(self, result: CellResult) -> None:
        fitted = result.within(self._room)
        # Flagged when any result lost a representation, some text, or its place.
        self._results_truncated |= fitted is None or fitted.truncated
        if fitted is None:
            return
        self._room -= fitted.size()
        self._results.append(fitted)
        await self.listener.result(fitted)

    async def error(self, error: CellError) -> None:
        if self._error is None:  # the exception the cell ended with comes first
            self._error = error

    async def finish(self, outcome: CellOutcome) -> CellRun:
        await self._output.close()
        error = _error(self._error, outcome, self._limits.timeout_s)
        if error is not None:
            await self.listener.error(error)
        return CellRun(
            context_id=self._ids[1], outcome=outcome, results=tuple(self._results),
            stdout=self._output.captured(Stream.STDOUT),
            stderr=self._output.captured(Stream.STDERR), error=error,
            results_truncated=self._results_truncated or outcome.results_truncated,
        )


_LOST = "it was restarted: its variables and imports are gone"


def _error(raised: CellError | None, outcome: CellOutcome, timeout_s: float) -> CellError | None:
    """What the cell ended with: its own exception, or what the service did to it."""
    trace = raised.traceback if raised is not None else ""
    if outcome.timed_out:
        value = f"the cell ran past its timeout of {timeout_s:g} s and was interrupted"
        if outcome.restarted:
            value += f"; it did not stop, so the context {_LOST}"
        return CellError("TimeoutError", value, trace)
    if outcome.ended is not None:
        value = f"the context's interpreter {outcome.ended}"
        if outcome.restarted:
            value += f"; {_LOST}"
        return CellError("ContextDied", value, trace)
    return raised
