"""What the service answers, as typed values. Each keeps the answer it came from in `raw`,
so fields the service adds later are reachable before this client knows them."""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass, field
from typing import Any

from sandbox_client.errors import ProtocolError


def _time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value)
    except ValueError:
        return None


def _required(data: dict[str, Any], name: str, what: str) -> Any:
    if name not in data:
        raise ProtocolError(f"the {what} has no {name!r}: {str(data)[:200]}")
    return data[name]


@dataclass(frozen=True)
class CommandResult:
    """How a script or command ended. A script that fails is a result with its exit code, not
    an exception; `exit_code` is None when it was ended first (`timed_out`) or killed."""

    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    sandbox_id: str = ""
    language: str = ""
    timed_out: bool = False
    oom_killed: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_ms: int = 0
    killed: bool = False  # ended by this client (CommandHandle.kill)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommandResult:
        return cls(
            exit_code=_required(data, "exit_code", "result"),
            stdout=str(data.get("stdout", "")),
            stderr=str(data.get("stderr", "")),
            sandbox_id=str(data.get("sandbox_id", "")),
            language=str(data.get("language", "")),
            timed_out=bool(data.get("timed_out", False)),
            oom_killed=bool(data.get("oom_killed", False)),
            stdout_truncated=bool(data.get("stdout_truncated", False)),
            stderr_truncated=bool(data.get("stderr_truncated", False)),
            duration_ms=int(data.get("duration_ms") or 0),
            raw=data,
        )


@dataclass(frozen=True)
class Limits:
    timeout_s: float | None = None
    memory_mb: int | None = None
    cpus: float | None = None
    pids: int | None = None
    open_files: int | None = None
    output_bytes: int | None = None

    @classmethod
    def from_dict(cls, data: object) -> Limits:
        if not isinstance(data, dict):
            return cls()
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox's record: `state` is creating, running, suspended, exited or failed."""

    sandbox_id: str
    state: str
    kind: str = ""
    language: str | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    exit_code: int | None = None
    reason: str = ""
    idle_timeout_s: float | None = None
    limits: Limits = field(default_factory=Limits)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxInfo:
        return cls(
            sandbox_id=str(_required(data, "sandbox_id", "sandbox record")),
            state=str(_required(data, "state", "sandbox record")),
            kind=str(data.get("kind") or ""),
            language=data.get("language"),
            created_at=_time(data.get("created_at")),
            updated_at=_time(data.get("updated_at")),
            exit_code=data.get("exit_code"),
            reason=str(data.get("reason") or ""),
            idle_timeout_s=data.get("idle_timeout_s"),
            limits=Limits.from_dict(data.get("limits")),
            raw=data,
        )


@dataclass(frozen=True)
class Output:
    """What a detached script printed so far (or in all, once it ended)."""

    sandbox_id: str
    state: str
    exit_code: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    reason: str = ""  # why it stopped, when followed to its end

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Output:
        return cls(
            sandbox_id=str(_required(data, "sandbox_id", "output")),
            state=str(data.get("state", "")),
            exit_code=data.get("exit_code"),
            stdout=str(data.get("stdout", "")),
            stderr=str(data.get("stderr", "")),
            stdout_truncated=bool(data.get("stdout_truncated", False)),
            stderr_truncated=bool(data.get("stderr_truncated", False)),
        )


@dataclass(frozen=True)
class FileEntry:
    name: str
    path: str
    kind: str  # "file", "directory", "link" or "other"
    size: int
    modified_at: datetime.datetime | None = None

    @classmethod
    def from_dict(cls, folder: str, data: dict[str, Any]) -> FileEntry:
        name = str(_required(data, "name", "file entry"))
        return cls(name=name, path=f"{folder.rstrip('/')}/{name}", kind=str(data.get("kind")),
                   size=int(data.get("size") or 0), modified_at=_time(data.get("modified_at")))


@dataclass(frozen=True)
class WriteInfo:
    path: str  # absolute, as the sandbox sees it
    size: int


@dataclass(frozen=True)
class Template:
    """A sandbox's state kept by `snapshot()`, to start sandboxes (or scripts) from."""

    template_id: str
    created_at: datetime.datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Template:
        return cls(template_id=str(_required(data, "template_id", "template record")),
                   created_at=_time(data.get("created_at")), raw=data)


@dataclass(frozen=True)
class ContextInfo:
    context_id: str
    language: str = "python"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContextInfo:
        context_id = data.get("context_id", data.get("id"))
        if context_id is None:
            raise ProtocolError(f"the context record has no 'context_id': {str(data)[:200]}")
        return cls(context_id=str(context_id), language=str(data.get("language") or "python"),
                   raw=data)


MIME_NAMES = {
    "text": "text/plain", "html": "text/html", "markdown": "text/markdown",
    "svg": "image/svg+xml", "png": "image/png", "jpeg": "image/jpeg",
    "json": "application/json", "latex": "text/latex", "javascript": "application/javascript",
}


@dataclass(frozen=True)
class Result:
    """One result of a cell: a MIME bundle as Jupyter makes them (`text/plain` always,
    `text/html` for DataFrames, `image/png` in base64 for figures, ...)."""

    data: dict[str, Any]
    is_main_result: bool = False  # the value of the cell's last expression
    truncated: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Result:
        # A bundle is either flat ({"text/plain": ...}) or Jupyter's message form
        # ({"data": {...}, "metadata": {...}}); the flags sit beside it.
        nested = raw.get("data")
        bundle = nested if isinstance(nested, dict) else {
            key: value for key, value in raw.items() if "/" in key}
        metadata = raw.get("metadata")
        return cls(data=bundle,
                   is_main_result=bool(raw.get("is_main_result", raw.get("main", False))),
                   truncated=bool(raw.get("truncated", False)),
                   metadata=metadata if isinstance(metadata, dict) else {})

    def formats(self) -> list[str]:
        return sorted(self.data)

    def _get(self, name: str) -> Any:
        return self.data.get(MIME_NAMES[name])

    def _text(self, name: str) -> str | None:
        value = self._get(name)
        return None if value is None else str(value)

    @property
    def text(self) -> str | None:
        return self._text("text")

    @property
    def html(self) -> str | None:
        return self._text("html")

    @property
    def markdown(self) -> str | None:
        return self._text("markdown")

    @property
    def svg(self) -> str | None:
        return self._text("svg")

    @property
    def png(self) -> str | None:
        """The PNG image in base64, as Jupyter carries it; `png_bytes()` decodes it."""
        return self._text("png")

    @property
    def jpeg(self) -> str | None:
        return self._text("jpeg")

    @property
    def json(self) -> Any:
        return self._get("json")

    def png_bytes(self) -> bytes | None:
        return None if self.png is None else base64.b64decode(self.png)


@dataclass(frozen=True)
class ExecutionError:
    """An exception the cell raised: its class name, its message and the traceback."""

    name: str
    value: str
    traceback: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecutionError:
        trace = data.get("traceback", "")
        if isinstance(trace, list):  # Jupyter sends lines
            trace = "\n".join(str(line) for line in trace)
        return cls(name=str(data.get("name", "")), value=str(data.get("value", "")),
                   traceback=str(trace))


@dataclass
class Logs:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass
class Execution:
    """A cell run in a code context."""

    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None

    @property
    def text(self) -> str | None:
        """The text of the cell's value (its last expression), if it had one."""
        main = [result for result in self.results if result.is_main_result]
        chosen = main or self.results
        return chosen[-1].text if chosen else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Execution:
        results = data.get("results") or []
        error = data.get("error")
        return cls(
            results=[Result.from_dict(item) for item in results if isinstance(item, dict)],
            logs=Logs(stdout=[data["stdout"]] if data.get("stdout") else [],
                      stderr=[data["stderr"]] if data.get("stderr") else []),
            error=ExecutionError.from_dict(error) if isinstance(error, dict) else None,
            execution_count=data.get("execution_count"),
        )
