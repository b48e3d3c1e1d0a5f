"""NDJSON event streams: lines into events, events into results.

Lines are split at "\\n" only, and each is parsed by the json module. (httpx's iter_lines
splits like str.splitlines, also at U+2028 or U+0085, which JSON may carry unescaped inside a
string: a line of output holding one would be cut in two.)

The collectors are shared by the sync and async clients: each event may call back the
caller's function, whose return value (an awaitable, in the async client) is handed back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from sandbox_client.errors import ProtocolError, error_from
from sandbox_client.models import (
    CommandResult,
    Execution,
    ExecutionError,
    Logs,
    Output,
    Result,
)

Event = dict[str, Any]
# Callbacks return None (or, in the async client, possibly an awaitable).
OnText = Callable[[str], object]
OnResult = Callable[[Result], object]
OnError = Callable[[ExecutionError], object]


class _Lines:
    """Complete lines out of chunks of bytes."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._pending += chunk
        *lines, rest = self._pending.split(b"\n")
        self._pending = bytearray(rest)
        return [bytes(line) for line in lines]

    def rest(self) -> list[bytes]:
        return [bytes(self._pending)] if self._pending.strip() else []


def _event(line: bytes) -> Event | None:
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except ValueError as error:
        raise ProtocolError(f"a stream line is not JSON: {line[:200]!r}") from error
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError(f"a stream line is not an event: {line[:200]!r}")
    return event


def events(chunks: Iterable[bytes]) -> Iterator[Event]:
    lines = _Lines()
    for chunk in chunks:
        for line in lines.feed(chunk):
            if (event := _event(line)) is not None:
                yield event
    for line in lines.rest():
        if (event := _event(line)) is not None:
            yield event


async def aevents(chunks: AsyncIterable[bytes]) -> AsyncIterator[Event]:
    lines = _Lines()
    async for chunk in chunks:
        for line in lines.feed(chunk):
            if (event := _event(line)) is not None:
                yield event
    for line in lines.rest():
        if (event := _event(line)) is not None:
            yield event


def raise_service_error(event: Event) -> None:
    """An `error` event of the service (not of the code): `{"error": {"code", "message"}}`."""
    error = event.get("error")
    if isinstance(error, dict) and "code" in error:
        raise error_from(str(error["code"]), str(error.get("message", "")))


class CommandEvents:
    """The events of `/execute?stream=true` or `/exec?stream=true`: start, stdout, stderr,
    then exit (the result without its output) or error."""

    def __init__(self, on_stdout: OnText | None = None, on_stderr: OnText | None = None):
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self._output: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.sandbox_id: str | None = None
        self._summary: Event | None = None

    @property
    def ended(self) -> bool:
        return self._summary is not None

    def feed(self, event: Event) -> object:
        kind = event["type"]
        if kind == "start":
            self.sandbox_id = str(event.get("sandbox_id", ""))
        elif kind in self._output:
            text = str(event.get("data", ""))
            self._output[kind].append(text)
            callback = self._callbacks[kind]
            return callback(text) if callback is not None else None
        elif kind == "exit":
            self._summary = event
        elif kind == "error":
            raise_service_error(event)
            raise ProtocolError(f"an error event without an error: {str(event)[:200]}")
        return None  # kinds this client does not know yet are passed over

    def result(self, killed: bool = False) -> CommandResult:
        output = {name: "".join(parts) for name, parts in self._output.items()}
        if killed:
            return CommandResult(exit_code=None, sandbox_id=self.sandbox_id or "", killed=True,
                                 stdout=output["stdout"], stderr=output["stderr"])
        if self._summary is None:
            raise ProtocolError("the stream ended before its exit event")
        summary = {key: value for key, value in self._summary.items() if key != "type"}
        return CommandResult.from_dict({"sandbox_id": self.sandbox_id, **summary, **output})


class OutputEvents:
    """The events of `/sandboxes/{id}/output?follow=true`: start, stdout, stderr, then exit or
    state (the sandbox's record) or deleted."""

    def __init__(self, on_stdout: OnText | None = None, on_stderr: OnText | None = None):
        self._command = CommandEvents(on_stdout, on_stderr)
        self._final: Event | None = None

    def feed(self, event: Event) -> object:
        if event["type"] in ("exit", "state", "deleted"):
            self._final = event
            return None
        return self._command.feed(event)

    def result(self, sandbox_id: str) -> Output:
        final = self._final
        if final is None:
            raise ProtocolError("the output stream ended before the sandbox stopped")
        done = self._command.result(killed=True)
        state = "deleted" if final["type"] == "deleted" else str(final.get("state", ""))
        return Output(sandbox_id=sandbox_id, state=state, exit_code=final.get("exit_code"),
                      stdout=done.stdout, stderr=done.stderr,
                      reason=str(final.get("reason") or ""))


class CellEvents:
    """The events of a context's `run?stream=true`: stdout, stderr, result (a MIME bundle),
    error (the cell's exception), then end."""

    def __init__(
        self,
        on_stdout: OnText | None = None,
        on_stderr: OnText | None = None,
        on_result: OnResult | None = None,
        on_error: OnError | None = None,
    ) -> None:
        self.execution = Execution(logs=Logs())
        self._on = {"stdout": on_stdout, "stderr": on_stderr}
        self._on_result, self._on_error = on_result, on_error
        self.ended = False

    def feed(self, event: Event) -> object:
        kind = event["type"]
        if kind in self._on:
            text = str(event.get("data", ""))
            getattr(self.execution.logs, kind).append(text)
            callback = self._on[kind]
            return callback(text) if callback is not None else None
        if kind == "result":
            result = Result.from_dict(_result_payload(event))
            self.execution.results.append(result)
            return self._on_result(result) if self._on_result is not None else None
        if kind == "error":
            raise_service_error(event)
            error = ExecutionError.from_dict(_payload(event))
            self.execution.error = error
            return self._on_error(error) if self._on_error is not None else None
        if kind == "end":
            self.ended = True
            count = event.get("execution_count")
            if count is not None:
                self.execution.execution_count = count
        return None

    def result(self) -> Execution:
        if not self.ended:
            raise ProtocolError("the cell's stream ended before its end event")
        return self.execution


def _payload(event: Event) -> dict[str, Any]:
    """An error event's content: nested under `error` or beside `type`."""
    nested = event.get("error")
    if isinstance(nested, dict):
        return nested
    return {key: value for key, value in event.items() if key != "type"}


def _result_payload(event: Event) -> dict[str, Any]:
    """A result event's bundle with its flags: under `result`, or beside `type` (where the
    bundle itself may be flat or under `data`, as Result.from_dict reads it)."""
    nested = event.get("result")
    if isinstance(nested, dict):
        return nested
    return {key: value for key, value in event.items() if key != "type"}
