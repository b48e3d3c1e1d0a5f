"""The sync client: `Sandbox`, with its commands, files and code contexts."""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, overload

from sandbox_client import _calls
from sandbox_client._background import CommandHandle
from sandbox_client._calls import Code, Packages
from sandbox_client._events import (
    CellEvents,
    CommandEvents,
    Event,
    OnError,
    OnResult,
    OnText,
    OutputEvents,
    events,
)
from sandbox_client._http import Call, SyncHTTP, translated_errors
from sandbox_client._local_files import CHUNK_BYTES, local_chunks, remote_name, saved_atomically
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


class Sandbox:
    """A long-lived sandbox. Used as a context manager it is deleted on the way out, unless
    `keep` is true; `close()` only lets go of the connection."""

    def __init__(self, info: SandboxInfo, http: SyncHTTP, keep: bool = False) -> None:
        self.sandbox_id = info.sandbox_id
        self.keep = keep
        self._http = http
        self._default_context: Context | None = None
        self.commands = Commands(self)
        self.files = Files(self)

    def __repr__(self) -> str:
        return f"Sandbox({self.sandbox_id!r})"

    # Finding and making sandboxes -------------------------------------------------------

    @classmethod
    def create(
        cls, language: str = "python", *, packages: Packages = None, memory_mb: int | None = None,
        timeout: float | None = None, env: Mapping[str, str] | None = None,
        idle_timeout: float | None = None, template: str | None = None, keep: bool = False,
        url: str | None = None, api_token: str | None = None,
        config: ConnectionConfig | None = None,
    ) -> Sandbox:
        """A new sandbox. `timeout` is the limit of each exec in it, in seconds."""
        http = SyncHTTP(connection(url, api_token, config))
        with _closed_on_error(http):
            record = http.json(_calls.create_sandbox(
                http.config, language, packages=packages, memory_mb=memory_mb, timeout=timeout,
                env=env, idle_timeout=idle_timeout, template=template))
        return cls(SandboxInfo.from_dict(record), http, keep)

    @classmethod
    def connect(
        cls, sandbox_id: str, *, keep: bool = False, url: str | None = None,
        api_token: str | None = None, config: ConnectionConfig | None = None,
    ) -> Sandbox:
        """A sandbox that exists (SandboxNotFound otherwise)."""
        http = SyncHTTP(connection(url, api_token, config))
        with _closed_on_error(http):
            record = http.json(Call("GET", _calls.sandbox_url(sandbox_id)))
        return cls(SandboxInfo.from_dict(record), http, keep)

    @classmethod
    def run_detached(
        cls, code: Code, language: str = "python", *, packages: Packages = None,
        timeout: float | None = None, memory_mb: int | None = None,
        template: str | None = None, keep: bool = False, url: str | None = None,
        api_token: str | None = None, config: ConnectionConfig | None = None,
    ) -> Sandbox:
        """Start a script and return at once; follow it with `logs(follow=True)`."""
        http = SyncHTTP(connection(url, api_token, config))
        with _closed_on_error(http):
            record = http.json(_calls.execute(
                http.config, code, language, packages=packages, timeout=timeout,
                memory_mb=memory_mb, template=template, detach=True))
        return cls(SandboxInfo.from_dict(record), http, keep)

    @classmethod
    def list(
        cls, state: str | None = None, *, url: str | None = None, api_token: str | None = None,
        config: ConnectionConfig | None = None,
    ) -> builtins.list[SandboxInfo]:
        with _client(url, api_token, config) as http:
            body = http.json(_calls.list_sandboxes(state))
        return [SandboxInfo.from_dict(item) for item in body.get("sandboxes", [])]

    @classmethod
    def list_templates(
        cls, *, url: str | None = None, api_token: str | None = None,
        config: ConnectionConfig | None = None,
    ) -> builtins.list[Template]:
        with _client(url, api_token, config) as http:
            body = http.json(Call("GET", "/templates"))
        return [Template.from_dict(item) for item in body.get("templates", [])]

    @classmethod
    def delete_template(
        cls, template_id: str, *, url: str | None = None, api_token: str | None = None,
        config: ConnectionConfig | None = None,
    ) -> None:
        with _client(url, api_token, config) as http:
            http.send(Call("DELETE", f"/templates/{_calls._segment(template_id)}"))

    # The sandbox itself -----------------------------------------------------------------

    @property
    def config(self) -> ConnectionConfig:
        return self._http.config

    def info(self) -> SandboxInfo:
        return SandboxInfo.from_dict(self._json("GET"))

    def suspend(self) -> SandboxInfo:
        """Checkpoint it to disk: no process and no memory left until `resume()`."""
        return SandboxInfo.from_dict(self._json("POST", "/suspend"))

    def resume(self) -> SandboxInfo:
        return SandboxInfo.from_dict(self._json("POST", "/restore"))

    def snapshot(self) -> Template:
        """Keep its state (files, memory, processes) as a template to start others from."""
        return Template.from_dict(self._json("POST", "/snapshot"))

    def fork(self, count: int = 1) -> builtins.list[Sandbox]:
        """`count` new sandboxes, each going on from this one's state."""
        body = self._json("POST", "/fork", json={"count": count})
        return [Sandbox(SandboxInfo.from_dict(record), SyncHTTP(self.config), self.keep)
                for record in body.get("sandboxes", [])]

    def kill(self) -> bool:
        """Delete it and all it left; False if it was gone already."""
        try:
            self._http.send(Call("DELETE", _calls.sandbox_url(self.sandbox_id)))
        except NotFound:
            return False
        return True

    def logs(self, follow: bool = False, on_stdout: OnText | None = None,
             on_stderr: OnText | None = None) -> Output:
        """What a detached script printed; with `follow`, as it prints, until it stops."""
        if not follow:
            return Output.from_dict(self._http.json(_calls.output(self.config, self.sandbox_id,
                                                                  False)))
        collector = OutputEvents(on_stdout, on_stderr)
        self._stream(_calls.output(self.config, self.sandbox_id, True), collector.feed)
        return collector.result(self.sandbox_id)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            if not self.keep:
                self.kill()
        finally:
            self.close()

    # Code contexts ----------------------------------------------------------------------

    def create_context(self, language: str = "python") -> Context:
        """A persistent interpreter: variables, imports and files live from cell to cell."""
        record = self._http.json(_calls.create_context(self.sandbox_id, language))
        return Context(self, ContextInfo.from_dict(record))

    def list_contexts(self) -> builtins.list[Context]:
        body = self._json("GET", "/contexts")
        return [Context(self, ContextInfo.from_dict(item)) for item in body.get("contexts", [])]

    def default_context(self) -> Context:
        """The context `run_code` uses when given none (made on first use)."""
        if self._default_context is None:
            self._default_context = self.create_context()
        return self._default_context

    def forget_context(self, context: Context) -> None:
        default = self._default_context
        if default is not None and default.context_id == context.context_id:
            self._default_context = None

    def run_code(
        self, code: str, context: Context | str | None = None, *, timeout: float | None = None,
        on_stdout: OnText | None = None, on_stderr: OnText | None = None,
        on_result: OnResult | None = None, on_error: OnError | None = None,
    ) -> Execution:
        """Run a cell; with callbacks its output and results arrive as they are made."""
        context_id = (self.default_context().context_id if context is None
                      else context if isinstance(context, str) else context.context_id)
        callbacks = (on_stdout, on_stderr, on_result, on_error)
        stream = any(callback is not None for callback in callbacks)
        call = _calls.run_cell(self.config, self.sandbox_id, context_id, code, timeout, stream)
        if not stream:
            return Execution.from_dict(self._http.json(call))
        collector = CellEvents(*callbacks)
        self._stream(call, collector.feed)
        return collector.result()

    # Shared -----------------------------------------------------------------------------

    def _json(self, method: str, suffix: str = "", **fields: Any) -> dict[str, Any]:
        return self._http.json(Call(method, _calls.sandbox_url(self.sandbox_id, suffix),
                                    **fields))

    def _stream(self, call: Call, feed: Callable[[Event], object]) -> None:
        with self._http.stream(call) as response, translated_errors(self.config.url):
            for event in events(response.iter_bytes()):
                feed(event)

    def stream_command(self, call: Call, collector: CommandEvents) -> CommandResult:
        self._stream(call, collector.feed)
        return collector.result()

    @property
    def http(self) -> SyncHTTP:
        return self._http


class Context:
    """A code context (a persistent interpreter) in a sandbox."""

    def __init__(self, sandbox: Sandbox, info: ContextInfo) -> None:
        self.sandbox, self.info = sandbox, info
        self.context_id, self.language = info.context_id, info.language

    def __repr__(self) -> str:
        return f"Context({self.context_id!r}, language={self.language!r})"

    def run(
        self, code: str, *, timeout: float | None = None, on_stdout: OnText | None = None,
        on_stderr: OnText | None = None, on_result: OnResult | None = None,
        on_error: OnError | None = None,
    ) -> Execution:
        return self.sandbox.run_code(code, self, timeout=timeout, on_stdout=on_stdout,
                                     on_stderr=on_stderr, on_result=on_result,
                                     on_error=on_error)

    def interrupt(self) -> None:
        """Stop the running cell (a KeyboardInterrupt in it); the context lives on."""
        self._post("/interrupt")

    def restart(self) -> None:
        """Start the interpreter afresh: its variables are gone."""
        self._post("/restart")

    def delete(self) -> None:
        self.sandbox.http.send(Call("DELETE", _calls.context_url(
            self.sandbox.sandbox_id, self.context_id)))
        self.sandbox.forget_context(self)

    def _post(self, suffix: str) -> None:
        self.sandbox.http.send(Call("POST", _calls.context_url(
            self.sandbox.sandbox_id, self.context_id, suffix)))


class Commands:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    @overload
    def run(
        self, command: str | Sequence[str], *, language: str | None = ...,
        stdin: str | bytes | None = ..., env: Mapping[str, str] | None = ...,
        cwd: str | None = ..., timeout: float | None = ..., background: Literal[False] = ...,
        on_stdout: OnText | None = ..., on_stderr: OnText | None = ...,
    ) -> CommandResult: ...

    @overload
    def run(
        self, command: str | Sequence[str], *, language: str | None = ...,
        stdin: str | bytes | None = ..., env: Mapping[str, str] | None = ...,
        cwd: str | None = ..., timeout: float | None = ..., background: Literal[True],
        on_stdout: OnText | None = ..., on_stderr: OnText | None = ...,
    ) -> CommandHandle: ...

    def run(
        self, command: str | Sequence[str], *, language: str | None = None,
        stdin: str | bytes | None = None, env: Mapping[str, str] | None = None,
        cwd: str | None = None, timeout: float | None = None, background: bool = False,
        on_stdout: OnText | None = None, on_stderr: OnText | None = None,
    ) -> CommandResult | CommandHandle:
        """Run a command: a string is a Bash script (or of `language`), a list an argv.
        A command that fails is a result with its exit code. With `background`, a handle
        is returned once it started: `wait()` for its result, `kill()` to end it."""
        sandbox = self._sandbox
        stream = background or on_stdout is not None or on_stderr is not None
        call = _calls.exec_command(sandbox.config, sandbox.sandbox_id, command,
                                   language=language, stdin=stdin, env=env, cwd=cwd,
                                   timeout=timeout, stream=stream)
        if background:
            return CommandHandle(sandbox.config, call, on_stdout, on_stderr)
        if not stream:
            return CommandResult.from_dict(sandbox.http.json(call))
        return sandbox.stream_command(call, CommandEvents(on_stdout, on_stderr))


class Files:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def write(self, path: str, data: str | bytes) -> WriteInfo:
        """Write a file (relative paths start at /workspace); whole or not at all."""
        content = data.encode() if isinstance(data, str) else data
        return self._written(Call("PUT", self._url(path), content=content,
                                  headers=_calls.BINARY))

    @overload
    def read(self, path: str, format: Literal["text"] = ...) -> str: ...

    @overload
    def read(self, path: str, format: Literal["bytes"]) -> bytes: ...

    def read(self, path: str, format: Literal["text", "bytes"] = "text") -> str | bytes:
        content = self._sandbox.http.send(Call("GET", self._url(path))).content
        return content.decode() if format == "text" else content

    def list(self, path: str | None = None) -> builtins.list[FileEntry]:
        """The entries of a folder (/workspace when not given)."""
        body = self._sandbox._json("GET", "/files",
                                   params={"path": path} if path is not None else None)
        folder = str(body.get("path", path or "/workspace"))
        return [FileEntry.from_dict(folder, entry) for entry in body.get("entries", [])]

    def upload(self, local_path: str | os.PathLike[str], path: str | None = None) -> WriteInfo:
        """Copy a local file in, a chunk at a time (to /workspace/NAME when no path)."""
        local = Path(local_path)
        call = Call("PUT", self._url(path or remote_name(local)), headers=_calls.BINARY)
        return self._written(call, lambda: local_chunks(local))

    def download(self, path: str, local_path: str | os.PathLike[str] | None = None) -> Path:
        """Copy a file out, a chunk at a time; the local file appears whole or not at all."""
        target = Path(local_path) if local_path is not None else Path(Path(path).name)
        with self._sandbox.http.stream(Call("GET", self._url(path))) as response, \
                saved_atomically(target) as out, translated_errors(self._sandbox.config.url):
            for chunk in response.iter_bytes(CHUNK_BYTES):
                out.write(chunk)
        return target

    def _url(self, path: str) -> str:
        return _calls.file_url(self._sandbox.sandbox_id, path)

    def _written(self, call: Call, body: Any = None) -> WriteInfo:
        answer = self._sandbox.http.json(call, body)
        return WriteInfo(path=str(answer.get("path", "")), size=int(answer.get("size", 0)))


@contextlib.contextmanager
def _closed_on_error(http: SyncHTTP) -> Iterator[None]:
    try:
        yield
    except BaseException:
        http.close()
        raise


@contextlib.contextmanager
def _client(url: str | None, api_token: str | None,
            config: ConnectionConfig | None) -> Iterator[SyncHTTP]:
    http = SyncHTTP(connection(url, api_token, config))
    try:
        yield http
    finally:
        http.close()


__all__ = ["Commands", "Context", "Files", "Sandbox"]
