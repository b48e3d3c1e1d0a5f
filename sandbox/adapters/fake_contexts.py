"""Code contexts of the fake runtime: interpreters of a tiny language, in memory.

Per line of a cell: `import ...` (ignored); `NAME = EXPR`; `print(EXPR)` or
`print(EXPR, file=sys.stderr)`; `raise NAME("text")`; `time.sleep(S)`; `while True: pass`
(until interrupted); `signal.signal(signal.SIGINT, signal.SIG_IGN)` (interrupts are ignored
from then on); `os._exit(N)` (the interpreter ends). EXPR is an integer, a quoted string, a
name, `HTML("...")`, or terms joined by `+`. A last line that is an expression is the cell's
value. Anything else is a SyntaxError. As in Python, a cell stops at its first exception.
"""

from __future__ import annotations

import asyncio
import re
import time

from sandbox.domain.cells import CellError, CellLimits, CellOutcome, CellResult, CodeContext
from sandbox.domain.errors import ContextNotFound, InvalidState, RuntimeFailure
from sandbox.domain.model import Stream
from sandbox.domain.ports import CellSink

_NAME = r"[A-Za-z_]\w*"
_ASSIGN = re.compile(rf"(?P<name>{_NAME})\s*=\s*(?P<expr>.+)")
_PRINT = re.compile(r"print\((?P<expr>.+?)(?P<err>,\s*file=sys\.stderr)?\)")
_RAISE = re.compile(rf"raise (?P<name>{_NAME})\((?P<q>[\"'])(?P<text>[^\"']*)(?P=q)\)")
_SLEEP = re.compile(r"time\.sleep\((?P<s>[\d.]+)\)")
_EXIT = re.compile(r"os\._exit\((?P<code>\d+)\)")
_STRING = re.compile(r"(?P<q>[\"'])(?P<text>[^\"']*)(?P=q)")
_HTML = re.compile(r"HTML\((?P<q>[\"'])(?P<text>[^\"']*)(?P=q)\)")
_FOREVER = "while True: pass"
_IGNORE_INTERRUPTS = "signal.signal(signal.SIGINT, signal.SIG_IGN)"


class _Raised(Exception):
    def __init__(self, name: str, value: str) -> None:
        super().__init__(value)
        self.error = CellError(name, value, f"Traceback (most recent call last):\n{name}: {value}")


class _Exited(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class FakeKernel:
    def __init__(self, context: CodeContext) -> None:
        self.context = context
        self.namespace: dict[str, object] = {}
        self.count = 0
        self.ignores_interrupts = False
        self.ended: str | None = None  # why it ended, until it is restarted
        self.cell: asyncio.Task[None] | None = None
        self.interrupted = False
        # Why its running cell was cut short (restart, delete), and whether it lives on.
        self.cut: tuple[str, bool] | None = None

    def restart(self) -> None:
        self.namespace, self.count = {}, 0
        self.ignores_interrupts, self.ended = False, None

    def saved(self) -> FakeKernel:
        """Its state for a checkpoint (a sandbox is not suspended while a cell runs)."""
        copy = FakeKernel(self.context)
        copy.namespace, copy.count = dict(self.namespace), self.count
        copy.ignores_interrupts, copy.ended = self.ignores_interrupts, self.ended
        return copy

    async def play(self, code: str, sink: CellSink) -> None:
        lines = [line.strip() for line in code.splitlines() if line.strip()]
        try:
            for index, line in enumerate(lines):
                value = await self._line(line, sink, last=index == len(lines) - 1)
                if value is not None:
                    await sink.result(value)
        except _Raised as raised:
            await sink.error(raised.error)
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
            self.interrupted = False
            await sink.error(CellError("KeyboardInterrupt", "",
                                       "Traceback (most recent call last):\nKeyboardInterrupt"))

    async def _line(self, line: str, sink: CellSink, last: bool) -> CellResult | None:
        if line.startswith("import "):
            return None
        if line == _FOREVER:
            await asyncio.Event().wait()
        if line == _IGNORE_INTERRUPTS:
            self.ignores_interrupts = True
            return None
        if (slept := _SLEEP.fullmatch(line)) is not None:
            await asyncio.sleep(float(slept["s"]))
        elif (ended := _EXIT.fullmatch(line)) is not None:
            raise _Exited(int(ended["code"]))
        elif (raised := _RAISE.fullmatch(line)) is not None:
            raise _Raised(raised["name"], raised["text"])
        elif (printed := _PRINT.fullmatch(line)) is not None:
            stream = Stream.STDERR if printed["err"] else Stream.STDOUT
            await sink.output(stream, f"{self._value(printed['expr'])}\n".encode())
        elif (assigned := _ASSIGN.fullmatch(line)) is not None:
            self.namespace[assigned["name"]] = self._value(assigned["expr"])
        elif last:
            return self._shown(line)
        else:
            raise _Raised("SyntaxError", f"the fake runtime cannot run: {line[:80]}")
        return None

    def _shown(self, expression: str) -> CellResult:
        html = _HTML.fullmatch(expression)
        if html is not None:
            return CellResult({"text/plain": "<IPython.core.display.HTML object>",
                               "text/html": html["text"]}, is_main_result=True)
        return CellResult({"text/plain": repr(self._value(expression))}, is_main_result=True)

    def _value(self, expression: str) -> object:
        terms = [self._term(term.strip()) for term in expression.split("+")]
        total = terms[0]
        for term in terms[1:]:
            total = total + term  # type: ignore[operator]
        return total

    def _term(self, term: str) -> object:
        if term.isdigit():
            return int(term)
        if (quoted := _STRING.fullmatch(term)) is not None:
            return quoted["text"]
        if re.fullmatch(_NAME, term):
            if term not in self.namespace:
                raise _Raised("NameError", f"name '{term}' is not defined")
            return self.namespace[term]
        raise _Raised("SyntaxError", f"the fake runtime cannot run: {term[:80]}")


class FakeContexts:
    """The contexts of one fake sandbox."""

    def __init__(self, kernels: dict[str, FakeKernel] | None = None) -> None:
        self.kernels = kernels or {}
        self.closed = False

    def saved(self) -> dict[str, FakeKernel]:
        return {context_id: kernel.saved() for context_id, kernel in self.kernels.items()}

    def start(self, context: CodeContext) -> None:
        self.kernels[context.context_id] = FakeKernel(context)

    def listed(self) -> list[CodeContext]:
        return sorted((kernel.context for kernel in self.kernels.values()),
                      key=lambda context: context.created_at)

    def kernel(self, context_id: str) -> FakeKernel:
        kernel = self.kernels.get(context_id)
        if kernel is None:
            raise ContextNotFound(f"no context with id {context_id!r} in this sandbox")
        return kernel

    async def run(self, context_id: str, code: str, limits: CellLimits,
                  sink: CellSink) -> CellOutcome:
        kernel = self.kernel(context_id)
        if kernel.cell is not None:
            raise InvalidState("a cell is running in this context; interrupt it or wait")
        await sink.started()
        started = time.monotonic()
        if kernel.ended is not None:
            ended = kernel.ended
            kernel.restart()
            return CellOutcome(None, restarted=True, ended=f"{ended} before this cell ran, "
                               "which was not run", duration_ms=_ms_since(started))
        kernel.count += 1
        count = kernel.count
        kernel.cell = asyncio.ensure_future(kernel.play(code, sink))
        try:
            outcome = await self._finish(kernel, kernel.cell, limits.timeout_s)
        finally:
            kernel.cell = None
        return CellOutcome(count if not outcome.restarted else None,
                           timed_out=outcome.timed_out, restarted=outcome.restarted,
                           ended=outcome.ended, duration_ms=_ms_since(started))

    async def _finish(self, kernel: FakeKernel, cell: asyncio.Task[None],
                      timeout_s: float) -> CellOutcome:
        done, _ = await asyncio.wait({cell}, timeout=timeout_s)
        timed_out = not done
        if timed_out and not kernel.ignores_interrupts:
            self.interrupt(kernel.context.context_id)
        elif timed_out:  # it does not stop: started afresh
            cell.cancel()
            kernel.restart()
        await asyncio.wait({cell})
        if self.closed:
            raise RuntimeFailure("the sandbox ended while the cell ran")
        error = None if cell.cancelled() else cell.exception()
        if isinstance(error, _Exited):
            kernel.restart()
            return CellOutcome(None, restarted=True, ended=f"exited with code {error.code}")
        if error is not None:
            raise error
        if cell.cancelled():
            (why, restarted), kernel.cut = kernel.cut or ("was restarted", True), None
            return CellOutcome(None, timed_out=timed_out, restarted=timed_out or restarted,
                               ended=None if timed_out else why)
        return CellOutcome(kernel.count, timed_out=timed_out)

    def interrupt(self, context_id: str) -> None:
        kernel = self.kernel(context_id)
        if kernel.cell is not None and not kernel.ignores_interrupts:
            kernel.interrupted = True
            kernel.cell.cancel()

    def restart(self, context_id: str) -> None:
        kernel = self.kernel(context_id)
        if kernel.cell is not None:
            kernel.cut = ("was restarted while the cell ran", True)
            kernel.cell.cancel()
        kernel.restart()

    def stop(self, context_id: str) -> None:
        kernel = self.kernels.pop(context_id, None)
        if kernel is None:
            raise ContextNotFound(f"no context with id {context_id!r} in this sandbox")
        if kernel.cell is not None:
            kernel.cut = ("ended: the context was deleted while the cell ran", False)
            kernel.cell.cancel()

    def close(self) -> None:
        """The sandbox ends: so do its contexts, and a running cell fails."""
        self.closed = True
        for kernel in self.kernels.values():
            if kernel.cell is not None:
                kernel.cell.cancel()


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
