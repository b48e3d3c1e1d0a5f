"""Commands that run on while the caller does something else (`background=True`).

The exec is a streamed request that lasts as long as the command; closing it ends the
command (the server kills its process group when the caller goes away). The sync client
runs that request in a thread of its own, on an event loop, because a task can be cancelled
from outside at any moment while a thread blocked reading a socket cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Callable
from typing import Any

from sandbox_client._events import CommandEvents, OnText, aevents
from sandbox_client._http import AsyncHTTP, Call, translated_errors
from sandbox_client.config import ConnectionConfig
from sandbox_client.models import CommandResult


async def _streamed(http: AsyncHTTP, call: Call, events: CommandEvents,
                    on_start: Callable[[], None]) -> CommandResult:
    try:
        async with http.stream(call) as response:
            with translated_errors(http.config.url):
                async for event in aevents(response.aiter_bytes()):
                    pending = events.feed(event)
                    if inspect.isawaitable(pending):
                        await pending
                    if event["type"] == "start":
                        on_start()
        return events.result()
    except asyncio.CancelledError:
        # Only kill() cancels this task, which it owns: the command ended as asked.
        return events.result(killed=True)


class CommandHandle:
    """A command running in the background. Callbacks are called from a thread of its own."""

    def __init__(self, config: ConnectionConfig, call: Call,
                 on_stdout: OnText | None, on_stderr: OnText | None) -> None:
        self._config, self._call = config, call
        self._events = CommandEvents(on_stdout, on_stderr)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._started = threading.Event()
        self._result: CommandResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sandbox-command", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:  # refused before it started (409, 429 after retries...)
            raise self._error

    def _run(self) -> None:
        try:
            with asyncio.Runner() as runner:
                self._result = runner.run(self._stream())
        except BaseException as error:  # handed to the caller by wait()
            self._error = error
        finally:
            self._started.set()

    async def _stream(self) -> CommandResult:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        http = AsyncHTTP(self._config)
        try:
            return await _streamed(http, self._call, self._events, self._started.set)
        finally:
            await http.close()

    @property
    def sandbox_id(self) -> str | None:
        return self._events.sandbox_id

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> CommandResult:
        """The result once the command ended; TimeoutError if it runs on past `timeout`."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the command still runs after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def kill(self) -> bool:
        """End the command; False if it had ended already."""
        loop, task = self._loop, self._task
        if loop is None or task is None or self.done:
            return False
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: it had ended
            loop.call_soon_threadsafe(task.cancel)
            return True
        return False


class AsyncCommandHandle:
    """A command running in the background of an AsyncSandbox."""

    def __init__(self, task: asyncio.Task[CommandResult], events: CommandEvents) -> None:
        self._task, self._events = task, events

    @classmethod
    async def start(cls, http: AsyncHTTP, call: Call, on_stdout: OnText | None,
                    on_stderr: OnText | None) -> AsyncCommandHandle:
        events = CommandEvents(on_stdout, on_stderr)
        started = asyncio.Event()
        task = asyncio.create_task(_streamed(http, call, events, started.set))
        waiting = asyncio.create_task(started.wait())
        try:
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the caller was cancelled: so is the command
            task.cancel()
            raise
        finally:
            waiting.cancel()
        if task.done():
            task.result()  # refused before it started: raised here
        return cls(task, events)

    @property
    def sandbox_id(self) -> str | None:
        return self._events.sandbox_id

    @property
    def done(self) -> bool:
        return self._task.done()

    async def wait(self, timeout: float | None = None) -> CommandResult:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self._task)

    async def kill(self) -> bool:
        if self._task.done():
            return False
        self._task.cancel()
        await asyncio.wait({self._task})
        return True
