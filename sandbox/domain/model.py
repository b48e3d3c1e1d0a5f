from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field

from sandbox.domain.reasons import ReasonCode


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
    """Per-sandbox limits. The runtime enforces them; the service caps them by settings.
    Their defaults are settings (`Settings.default_limits`), kept there alone."""

    timeout_s: float
    memory_mb: int
    cpus: float
    pids: int
    open_files: int
    file_size_mb: int
    tmp_mb: int
    output_bytes: int


@dataclass(frozen=True)
class Program:
    """What to run inside a sandbox: a script in a language, or a plain argument list."""

    language: Language | None
    source: bytes = b""
    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    # The working directory of an exec (absolute); None: the sandbox's own, /workspace.
    cwd: str | None = None

    @classmethod
    def script(cls, language: Language, source: bytes) -> Program:
        return cls(language=language, source=source)


# What a long-lived sandbox runs at first: nothing; work arrives with exec.
IDLE = Program(language=None)


@dataclass(frozen=True)
class SandboxSpec:
    """Everything the runtime needs to create one sandbox."""

    sandbox_id: str
    limits: Limits
    package_dirs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    # Egress allow-list entries (see domain/egress.py), already checked against the
    # operator's; empty: no way out at all.
    network_allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """How a process ended, as the supervisor saw it (never guessed from its output)."""

    exit_code: int | None
    timed_out: bool = False
    oom_killed: bool = False
    duration_ms: int = 0
    # Set when the sandbox ended because the runtime broke (its agent stopped or lied), with
    # why, for the log; the record then says `failed`.
    failure: str | None = None


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


@dataclass(frozen=True)
class FileEntry:
    name: str
    kind: str  # "file", "directory", "link" or "other"
    size: int
    modified_at: float


class SandboxKind(enum.StrEnum):
    """A detached script (ends when the script ends) or a long-lived session (idles)."""

    SCRIPT = "script"
    SESSION = "session"


_TRANSITIONS: dict[SandboxState, frozenset[SandboxState]] = {
    SandboxState.CREATING: frozenset({SandboxState.RUNNING, SandboxState.FAILED}),
    SandboxState.RUNNING: frozenset(
        {SandboxState.EXITED, SandboxState.SUSPENDED, SandboxState.FAILED}
    ),
    SandboxState.SUSPENDED: frozenset({SandboxState.RUNNING, SandboxState.FAILED}),
    SandboxState.EXITED: frozenset(),
    SandboxState.FAILED: frozenset(),
}


def can_move(source: SandboxState, target: SandboxState) -> bool:
    return target in _TRANSITIONS[source]


@dataclass(frozen=True)
class Sandbox:
    """The record of a sandbox the service manages (detached or long-lived)."""

    sandbox_id: str
    kind: SandboxKind
    state: SandboxState
    language: Language | None
    limits: Limits
    created_at: float
    updated_at: float
    exit_code: int | None = None
    # Why it is in its state: a sentence for people and a stable code for programs; never
    # the runtime's or the host's own words (those go to the log).
    reason: str = ""
    reason_code: ReasonCode | None = None
    env: tuple[tuple[str, str], ...] = ()
    package_dirs: tuple[str, ...] = ()
    # The releases (`name==version`) of each of package_dirs, in the same order: another
    # instance rebuilds the same layers from them before it restores the sandbox.
    package_pins: tuple[tuple[str, ...], ...] = ()
    idle_timeout_s: float | None = None
    last_activity_at: float = 0.0
    # Seconds the sandbox has run so far, so a detached script's time limit spans suspends.
    run_seconds: float = 0.0
    running_since: float | None = None
    # The key of its checkpoint image in the image store, while suspended.
    checkpoint: str | None = None
    checkpoint_identity: tuple[tuple[str, str], ...] = ()
    network_allow: tuple[str, ...] = ()
    # The template it was started from, if any: the template cannot be deleted while this
    # sandbox may still run.
    template_id: str | None = None

    def spec(self) -> SandboxSpec:
        return SandboxSpec(sandbox_id=self.sandbox_id, limits=self.limits,
                           package_dirs=self.package_dirs, env=self.env,
                           network_allow=self.network_allow)

    def to_dict(self) -> dict[str, object]:
        return {
            "sandbox_id": self.sandbox_id,
            "kind": self.kind.value,
            "state": self.state.value,
            "language": self.language.value if self.language else None,
            "created_at": iso_time(self.created_at),
            "updated_at": iso_time(self.updated_at),
            "exit_code": self.exit_code,
            "reason": self.reason,
            "reason_code": self.reason_code.value if self.reason_code else None,
            "idle_timeout_s": self.idle_timeout_s,
            "limits": limits_dict(self.limits),
            "network": {"allow": list(self.network_allow)},
            "template": self.template_id,
        }


@dataclass(frozen=True)
class Template:
    """The state of a running sandbox (memory, files, processes), kept as an immutable image
    that sandboxes start from: each start is a restore of the image under a new id. What the
    sandbox was made with comes along, so every copy runs as its source did."""

    template_id: str
    source_sandbox_id: str
    kind: SandboxKind
    language: Language | None
    limits: Limits
    created_at: float
    size_bytes: int
    # What the image depends on (runtime version, rootfs, agent, platform): a server with
    # another identity refuses to start from it.
    identity: tuple[tuple[str, str], ...]
    env: tuple[tuple[str, str], ...] = ()
    package_dirs: tuple[str, ...] = ()
    network_allow: tuple[str, ...] = ()
    idle_timeout_s: float | None = None
    # How long the source had run: a detached script's time limit spans its copies too.
    run_seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        # Env values (often secrets) and host paths stay out, as in a sandbox's record.
        return {
            "template_id": self.template_id,
            "sandbox_id": self.source_sandbox_id,  # the sandbox it was taken from
            "kind": self.kind.value,
            "language": self.language.value if self.language else None,
            "created_at": iso_time(self.created_at),
            "size_bytes": self.size_bytes,
            "idle_timeout_s": self.idle_timeout_s,
            "limits": limits_dict(self.limits),
            "network": {"allow": list(self.network_allow)},
            "env": sorted(name for name, _ in self.env),
            "packages": len(self.package_dirs),
            "identity": dict(self.identity),
        }


def limits_dict(limits: Limits) -> dict[str, object]:
    return {
        "timeout_s": limits.timeout_s,
        "memory_mb": limits.memory_mb,
        "cpus": limits.cpus,
        "pids": limits.pids,
        "open_files": limits.open_files,
        "output_bytes": limits.output_bytes,
    }


def iso_time(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()
