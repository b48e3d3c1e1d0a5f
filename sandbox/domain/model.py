from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Language(enum.StrEnum):
    PYTHON = "python"
    BASH = "bash"


class SandboxState(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    EXITED = "exited"
    SUSPENDED = "suspended"
    FAILED = "failed"


class Stream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True)
class Limits:
    """Per-sandbox limits. The runtime enforces them; the service caps them by settings."""

    timeout_s: float = 30.0
    memory_mb: int = 512
    cpus: float = 1.0
    pids: int = 256
    open_files: int = 1024
    file_size_mb: int = 256
    tmp_mb: int = 256
    output_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class Program:
    """What to run inside a sandbox: a script in a language, or a plain argument list."""

    language: Language | None
    source: bytes = b""
    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def script(cls, language: Language, source: bytes) -> Program:
        return cls(language=language, source=source)


@dataclass(frozen=True)
class SandboxSpec:
    """Everything the runtime needs to create one sandbox."""

    sandbox_id: str
    limits: Limits
    package_dirs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Outcome:
    """How a process ended, as the supervisor saw it (never guessed from its output)."""

    exit_code: int | None
    timed_out: bool = False
    oom_killed: bool = False
    duration_ms: int = 0


@dataclass
class CapturedOutput:
    text: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class ExecutionResult:
    sandbox_id: str
    language: str
    outcome: Outcome
    stdout: CapturedOutput = field(default_factory=CapturedOutput)
    stderr: CapturedOutput = field(default_factory=CapturedOutput)

    def summary(self) -> dict[str, object]:
        """The result without the captured text (the `exit` event of a stream)."""
        return {
            "sandbox_id": self.sandbox_id,
            "language": self.language,
            "exit_code": self.outcome.exit_code,
            "timed_out": self.outcome.timed_out,
            "oom_killed": self.outcome.oom_killed,
            "stdout_truncated": self.stdout.truncated,
            "stderr_truncated": self.stderr.truncated,
            "duration_ms": self.outcome.duration_ms,
        }

    def to_dict(self) -> dict[str, object]:
        return {**self.summary(), "stdout": self.stdout.text, "stderr": self.stderr.text}
