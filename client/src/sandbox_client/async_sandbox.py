"""The async client: `AsyncSandbox`, the same calls as `Sandbox`, awaited. Callbacks may be
plain functions or coroutine functions."""

from __future__ import annotations

import builtins
import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, overload

from sandbox_client import _calls
from sandbox_client._background import AsyncCommandHandle
from sandbox_client._calls import Code, Packages
from sandbox_client._events import (
    CellEvents,
    CommandEvents,
    Event,
    OnError,
    OnResult,
    OnText,
    OutputEvents,
    aevents,
)
from sandbox_client._http import AsyncHTTP, Call, translated_errors
from sandbox_client._local_files import (
    CHUNK_BYTES,
    local_chunks_async,
    remote_name,
    saved_atomically,
)
from sandbox_client.config import ConnectionConfig, connection
from sandbox_client.errors import NotFound
from sandbox_client.models import (
    CommandResult,
    ContextInfo,
    Execution,
    FileEntry,
    Output,
    SandboxInfo,
    Template,
    WriteInfo,
)


class AsyncSandbox:
    """A long-lived sandbox. `async with` deletes it on the way out, unless `keep` is true;
    `close()` only lets go of the connection."""

    def __init__(self, info: SandboxInfo, http: AsyncHTTP, keep: bool = False) -> None:
        self.sandbox_id = info.sandbox_id
        self.keep = keep
        self._http = http
        self._default_context: AsyncContext | None = None
        self.commands = AsyncCommands(self)
        self.files = AsyncFiles(self)

    def __repr__(self) -> str:
        return f"AsyncSandbox({self.sandbox_id!r})"

    @classmethod
    async def create(
        cls, language: str = "python", *, packages: Packages = None, memory_mb: int | None = None,
        timeout: float | None = None, env: Mapping[str, str] | None = None,
        idle_timeout: float | None = None, template: str | None = None, keep: bool = False,
        url: str | None = None, api_token: str | None = None,
        config: ConnectionConfig | None = None,
    ) -> AsyncSandbox:
        http = AsyncHTTP(connection(url, api_token, config))
        async with _closed_on_error(http):
            record = await http.json(_calls.create_sandbox(
                http.config, language, packages=packages, memory_mb=memory_mb, timeout=timeout,
                env=env, idle_timeout=idle_timeout, template=template))
        return cls(SandboxInfo.from_dict(record), http, keep)

    @classmethod
    async def connect(
        cls, sandbox_id: str, *, keep: bool = False, url: str | None = None,
        api_token: str | None = None, config: ConnectionConfig | None = None,
    ) -> AsyncSandbox:
        http = AsyncHTTP(connection(url, api_token, config))
        async with _closed_on_error(http):
            record = await http.json(Call("GET", _calls.sandbox_url(sandbox_id)))
        return cls(SandboxInfo.from_dict(record), http, keep)

    @classmethod
    async def run_detached(
        cls, code: Code, language: str = "python", *, packages: Packages = None,
        timeout: float | None = None, memory_mb: int | None = None,
        template: str | None = None, keep: bool = False, url: str | None = None,
        api_token: str | None = None, config: ConnectionConfig | None = None,
    ) -> AsyncSandbox:
        http = AsyncHTTP(connection(url, api_token, config))
        async with _closed_on_error(http):
            record = await http.json(_calls.execute(
                http.config, code, language, packages=packages, timeout=timeout,
                memory_mb=memory_mb, template=template, detach=True))
        return cls(SandboxInfo.from_dict(record), http, keep)

    @classmethod
    async def list(
        cls, state: str | None = None, *, url: str | None = None, api_token: str | None = None,
        config: ConnectionConfig | None = None,
    ) -> builtins.list[SandboxInfo]:
        async with _client(url, api_token, config) as http:
            body = await http.json(_calls.list_sandboxes(state))
        return [SandboxInfo.from_dict(item) for item in body.get("sandboxes", [])]

    @classmethod
    async def list_templates(
        cls, *, url: str | None = None, api_token: str | None = None,
        config: ConnectionConfig | None = None,
    ) -> builtins.list[Template]:
        async with _client(url, api_token, config) as http:
            body = await http.json(Call("GET", "/templates"))
        return [Template.from_dict(item) for item in body.get("templates", [])]

    @classmethod
    async def delete_template(
        cls, template_id: str, *, url: str | None = None, api_token: str | None = None,
        config: ConnectionConfig | None = None,
    ) -> None:
        async with _client(url, api_token, config) as http:
            await http.send(Call("DELETE", f"/templates/{_calls._segment(template_id)}"))

    @property
    def config(self) -> ConnectionConfig:
        return self._http.config

    @property
    def http(self) -> AsyncHTTP:
        return self._http

    async def info(self) -> SandboxInfo:
        return SandboxInfo.from_dict(await self._json("GET"))

    async def suspend(self) -> SandboxInfo:
        return SandboxInfo.from_dict(await self._json("POST", "/suspend"))

    async def resume(self) -> SandboxInfo:
        return SandboxInfo.from_dict(await self._json("POST", "/restore"))

    async def snapshot(self) -> Template:
        return Template.from_dict(await self._json("POST", "/snapshot"))

    async def fork(self, count: int = 1) -> builtins.list[AsyncSandbox]:
        body = await self._json("POST", "/fork", json={"count": count})
        return [AsyncSandbox(SandboxInfo.from_dict(record), AsyncHTTP(self.config), self.keep)
                for record in body.get("sandboxes", [])]

    async def kill(self) -> bool:
        try:
            await self._http.send(Call("DELETE", _calls.sandbox_url(self.sandbox_id)))
        except NotFound:
            return False
        return True

    async def logs(self, follow: bool = False, on_stdout: OnText | None = None,
                   on_stderr: OnText | None = None) -> Output:
        if not follow:
            return Output.from_dict(await self._http.json(
                _calls.output(self.config, self.sandbox_id, False)))
        collector = OutputEvents(on_stdout, on_stderr)
        await self._stream(_calls.output(self.config, self.sandbox_id, True), collector.feed)
        return collector.result(self.sandbox_id)

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        try:
            if not self.keep:
                await self.kill()
        finally:
            await self.close()

    async def create_context(self, language: str = "python") -> AsyncContext:
        record = await self._http.json(_calls.create_context(self.sandbox_id, language))
        return AsyncContext(self, ContextInfo.from_dict(record))

    async def list_contexts(self) -> builtins.list[AsyncContext]:
        body = await self._json("GET", "/contexts")
        return [AsyncContext(self, ContextInfo.from_dict(item))
                for item in body.get("contexts", [])]

    async def default_context(self) -> AsyncContext:
        if self._default_context is None:
            self._default_context = await self.create_context()
        return self._default_context

    def forget_context(self, context: AsyncContext) -> None:
        default = self._default_context
        if default is not None and default.context_id == context.context_id:
            self._default_context = None

    async def run_code(
        self, code: str, context: AsyncContext | str | None = None, *,
        timeout: float | None = None, on_stdout: OnText | None = None,
        on_stderr: OnText | None = None, on_result: OnResult | None = None,
        on_error: OnError | None = None,
    ) -> Execution:
        if context is None:
            context_id = (await self.default_context()).context_id
        else:
            context_id = context if isinstance(context, str) else context.context_id
        callbacks = (on_stdout, on_stderr, on_result, on_error)
        stream = any(callback is not None for callback in callbacks)
        call = _calls.run_cell(self.config, self.sandbox_id, context_id, code, timeout, stream)
        if not stream:
            return Execution.from_dict(await self._http.json(call))
        collector = CellEvents(*callbacks)
        await self._stream(call, collector.feed)
        return collector.result()

    async def _json(self, method: str, suffix: str = "", **fields: Any) -> dict[str, Any]:
        return await self._http.json(Call(method, _calls.sandbox_url(self.sandbox_id, suffix),
                                          **fields))

    async def _stream(self, call: Call, feed: Callable[[Event], object]) -> None:
        async with self._http.stream(call) as response:
            with translated_errors(self.config.url):
                async for event in aevents(response.aiter_bytes()):
                    pending = feed(event)
                    if inspect.isawaitable(pending):
                        await pending

    async def stream_command(self, call: Call, collector: CommandEvents) -> CommandResult:
        await self._stream(call, collector.feed)
        return collector.result()


class AsyncContext:
    def __init__(self, sandbox: AsyncSandbox, info: ContextInfo) -> None:
        self.sandbox, self.info = sandbox, info
        self.context_id, self.language = info.context_id, info.language

    def __repr__(self) -> str:
        return f"AsyncContext({self.context_id!r}, language={self.language!r})"

    async def run(
        self, code: str, *, timeout: float | None = None, on_stdout: OnText | None = None,
        on_stderr: OnText | None = None, on_result: OnResult | None = None,
        on_error: OnError | None = None,
    ) -> Execution:
        return await self.sandbox.run_code(code, self, timeout=timeout, on_stdout=on_stdout,
                                           on_stderr=on_stderr, on_result=on_result,
                                           on_error=on_error)

    async def interrupt(self) -> None:
        await self._post("/interrupt")

    async def restart(self) -> None:
        await self._post("/restart")

    async def delete(self) -> None:
        await self.sandbox.http.send(Call("DELETE", _calls.context_url(
            self.sandbox.sandbox_id, self.context_id)))
        self.sandbox.forget_context(self)

    async def _post(self, suffix: str) -> None:
        await self.sandbox.http.send(Call("POST", _calls.context_url(
            self.sandbox.sandbox_id, self.context_id, suffix)))


class AsyncCommands:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    @overload
    async def run(
        self, command: str | Sequence[str], *, language: str | None = ...,
        stdin: str | bytes | None = ..., env: Mapping[str, str] | None = ...,
        cwd: str | None = ..., timeout: float | None = ..., background: Literal[False] = ...,
        on_stdout: OnText | None = ..., on_stderr: OnText | None = ...,
    ) -> CommandResult: ...

    @overload
    async def run(
        self, command: str | Sequence[str], *, language: str | None = ...,
        stdin: str | bytes | None = ..., env: Mapping[str, str] | None = ...,
        cwd: str | None = ..., timeout: float | None = ..., background: Literal[True],
        on_stdout: OnText | None = ..., on_stderr: OnText | None = ...,
    ) -> AsyncCommandHandle: ...

    async def run(
        self, command: str | Sequence[str], *, language: str | None = None,
        stdin: str | bytes | None = None, env: Mapping[str, str] | None = None,
        cwd: str | None = None, timeout: float | None = None, background: bool = False,
        on_stdout: OnText | None = None, on_stderr: OnText | None = None,
    ) -> CommandResult | AsyncCommandHandle:
        sandbox = self._sandbox
        stream = background or on_stdout is not None or on_stderr is not None
        call = _calls.exec_command(sandbox.config, sandbox.sandbox_id, command,
                                   language=language, stdin=stdin, env=env, cwd=cwd,
                                   timeout=timeout, stream=stream)
        if background:
            return await AsyncCommandHandle.start(sandbox.http, call, on_stdout, on_stderr)
        if not stream:
            return CommandResult.from_dict(await sandbox.http.json(call))
        return await sandbox.stream_command(call, CommandEvents(on_stdout, on_stderr))


class AsyncFiles:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    async def write(self, path: str, data: str | bytes) -> WriteInfo:
        content = data.encode() if isinstance(data, str) else data
        return await self._written(Call("PUT", self._url(path), content=content,
                                        headers=_calls.BINARY))

    @overload
    async def read(self, path: str, format: Literal["text"] = ...) -> str: ...

    @overload
    async def read(self, path: str, format: Literal["bytes"]) -> bytes: ...

    async def read(self, path: str, format: Literal["text", "bytes"] = "text") -> str | bytes:
        content = (await self._sandbox.http.send(Call("GET", self._url(path)))).content
        return content.decode() if format == "text" else content

    async def list(self, path: str | None = None) -> builtins.list[FileEntry]:
        body = await self._sandbox._json("GET", "/files",
                                         params={"path": path} if path is not None else None)
        folder = str(body.get("path", path or "/workspace"))
        return [FileEntry.from_dict(folder, entry) for entry in body.get("entries", [])]

    async def upload(self, local_path: str | os.PathLike[str],
                     path: str | None = None) -> WriteInfo:
        local = Path(local_path)
        call = Call("PUT", self._url(path or remote_name(local)), headers=_calls.BINARY)
        return await self._written(call, lambda: local_chunks_async(local))

    async def download(self, path: str,
                       local_path: str | os.PathLike[str] | None = None) -> Path:
        target = Path(local_path) if local_path is not None else Path(Path(path).name)
        async with self._sandbox.http.stream(Call("GET", self._url(path))) as response:
            with saved_atomically(target) as out, translated_errors(self._sandbox.config.url):
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    out.write(chunk)
        return target

    def _url(self, path: str) -> str:
        return _calls.file_url(self._sandbox.sandbox_id, path)

    async def _written(self, call: Call, body: Any = None) -> WriteInfo:
        answer = await self._sandbox.http.json(call, body)
        return WriteInfo(path=str(answer.get("path", "")), size=int(answer.get("size", 0)))


@contextlib.asynccontextmanager
async def _closed_on_error(http: AsyncHTTP) -> AsyncIterator[None]:
    try:
        yield
    except BaseException:
        await http.close()
        raise


@contextlib.asynccontextmanager
async def _client(url: str | None, api_token: str | None,
                  config: ConnectionConfig | None) -> AsyncIterator[AsyncHTTP]:
    http = AsyncHTTP(connection(url, api_token, config))
    try:
        yield http
    finally:
        await http.close()
