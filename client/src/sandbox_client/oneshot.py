"""One script in a fresh sandbox (`POST /execute`), which is gone once it ended."""

from __future__ import annotations

import inspect

from sandbox_client import _calls
from sandbox_client._calls import Code, Packages
from sandbox_client._events import CommandEvents, OnText, aevents, events
from sandbox_client._http import AsyncHTTP, SyncHTTP, translated_errors
from sandbox_client.config import ConnectionConfig, connection
from sandbox_client.models import CommandResult


def run(
    code: Code, language: str = "python", *, packages: Packages = None,
    timeout: float | None = None, memory_mb: int | None = None, template: str | None = None,
    on_stdout: OnText | None = None, on_stderr: OnText | None = None,
    url: str | None = None, api_token: str | None = None, config: ConnectionConfig | None = None,
) -> CommandResult:
    """Run a script and return how it ended. With `on_stdout`/`on_stderr` its output is
    handed over as it is printed. A script that fails is a result with its exit code."""
    stream = on_stdout is not None or on_stderr is not None
    http = SyncHTTP(connection(url, api_token, config))
    try:
        call = _calls.execute(http.config, code, language, packages=packages, timeout=timeout,
                              memory_mb=memory_mb, template=template, stream=stream)
        if not stream:
            return CommandResult.from_dict(http.json(call))
        collector = CommandEvents(on_stdout, on_stderr)
        with http.stream(call) as response, translated_errors(http.config.url):
            for event in events(response.iter_bytes()):
                collector.feed(event)
        return collector.result()
    finally:
        http.close()


async def arun(
    code: Code, language: str = "python", *, packages: Packages = None,
    timeout: float | None = None, memory_mb: int | None = None, template: str | None = None,
    on_stdout: OnText | None = None, on_stderr: OnText | None = None,
    url: str | None = None, api_token: str | None = None, config: ConnectionConfig | None = None,
) -> CommandResult:
    """`run`, awaited; callbacks may be coroutine functions."""
    stream = on_stdout is not None or on_stderr is not None
    http = AsyncHTTP(connection(url, api_token, config))
    try:
        call = _calls.execute(http.config, code, language, packages=packages, timeout=timeout,
                              memory_mb=memory_mb, template=template, stream=stream)
        if not stream:
            return CommandResult.from_dict(await http.json(call))
        collector = CommandEvents(on_stdout, on_stderr)
        async with http.stream(call) as response:
            with translated_errors(http.config.url):
                async for event in aevents(response.aiter_bytes()):
                    pending = collector.feed(event)
                    if inspect.isawaitable(pending):
                        await pending
        return collector.result()
    finally:
        await http.close()
