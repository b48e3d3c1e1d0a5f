"""The ports the use cases speak to. Adapters implement them; the fakes live in adapters/."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox.domain.model import (
    FileEntry,
    Language,
    Outcome,
    Program,
    Sandbox,
    SandboxSpec,
    SandboxState,
    Stream,
)

if TYPE_CHECKING:
    from sandbox.domain.packages import RequirementSet


class OutputSink(abc.ABC):
    """Receives a sandbox's output as raw bytes, in the order it was read."""

    @abc.abstractmethod
    async def write(self, stream: Stream, data: bytes) -> None: ...


class SandboxRuntime(abc.ABC):
    """Creates and runs isolated sandboxes.

    Contract, for every implementation:
    - the program never runs on the host, and a sandbox sees nothing of the host's files,
      network or processes;
    - `run` creates a sandbox whose init is the program, delivers all its output to the sink
      (reading on while the sink discards, so a flood never blocks the script), ends it after
      `limits.timeout_s` (the verdict `timed_out` comes from the runtime's own timer), reports
      an out-of-memory kill from its own accounting, and leaves no container, process or file
      behind, whatever happens, cancellation included;
    - `RuntimeFailure` is raised only when the runtime itself breaks, never for a failing script.
    """

    @abc.abstractmethod
    async def run(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> Outcome: ...

    @abc.abstractmethod
    async def readiness(self) -> list[str]:
        """Problems that stop the runtime from running sandboxes now; empty when ready."""

    @property
    @abc.abstractmethod
    def identity(self) -> dict[str, str]:
        """What a checkpoint depends on (runtime version, rootfs identity)."""

    # Long-lived sandboxes. `launch` returns once the sandbox runs; its output flows to the
    # sink until it ends or is checkpointed, and `wait` tells how it ended.

    @abc.abstractmethod
    async def launch(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> None: ...

    @abc.abstractmethod
    async def wait(self, sandbox_id: str) -> Outcome:
        """Until the sandbox's init ends. exit_code is None when it did not end by itself
        (checkpointed, destroyed)."""

    @abc.abstractmethod
    async def exec(
        self, sandbox_id: str, program: Program, sink: OutputSink, stdin: bytes, timeout_s: float
    ) -> Outcome:
        """Run a program in a running sandbox. On timeout that program is killed; the
        sandbox lives on."""

    @abc.abstractmethod
    async def checkpoint(self, sandbox_id: str) -> str:
        """Save the sandbox (memory and all) and end it; return where the image is.

        On a RuntimeFailure no part of the image is left, and the sandbox either runs on or
        has ended (runsc ends it when the image cannot be written, on a full disk):
        `running_ids` tells which."""

    @abc.abstractmethod
    async def restore(self, spec: SandboxSpec, image: str, sink: OutputSink) -> None:
        """Bring a checkpointed sandbox back under the same id; its processes continue."""

    @abc.abstractmethod
    async def discard_checkpoint(self, image: str) -> None: ...

    @abc.abstractmethod
    async def destroy(self, sandbox_id: str) -> None:
        """End the sandbox and remove everything it has on the host, its checkpoint
        included. Idempotent."""

    @abc.abstractmethod
    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Write a file inside a running sandbox, as its user; parents are made."""

    @abc.abstractmethod
    async def read_file(self, sandbox_id: str, path: str, limit_bytes: int) -> bytes:
        """Read a file inside a running sandbox; FileTooLarge above limit_bytes."""

    @abc.abstractmethod
    async def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]: ...

    # Warm sandboxes (pools): started before any request, each runs one script and is then
    # destroyed by its owner.

    @abc.abstractmethod
    async def start_warm(
        self, spec: SandboxSpec, language: Language, preimport: tuple[str, ...]
    ) -> None:
        """Start a sandbox that will run one script of `language` as soon as it is given (for
        Python, an interpreter with the modules `preimport` imported, waiting); return once it
        is ready. On a failure, or when cancelled, nothing of it is left."""

    @abc.abstractmethod
    async def run_warm(
        self, sandbox_id: str, program: Program, sink: OutputSink, timeout_s: float
    ) -> Outcome:
        """Run the script in a sandbox `start_warm` made for its language, with what `run`
        promises a script in a new sandbox (the same output, exit code and verdicts; ended
        after `timeout_s`). The sandbox is spent afterwards; its owner destroys it."""

    @abc.abstractmethod
    async def running_ids(self) -> set[str]:
        """Ids of sandboxes whose init runs now."""

    @abc.abstractmethod
    async def leftover_ids(self) -> set[str]:
        """Ids with anything on the host (container, bundle, cgroup, checkpoint)."""


class SandboxStore(abc.ABC):
    """Durable records of managed sandboxes. Every write is atomic: a crash at any moment
    leaves each record either as it was or as it was written."""

    @abc.abstractmethod
    async def add(self, sandbox: Sandbox) -> None: ...

    @abc.abstractmethod
    async def get(self, sandbox_id: str) -> Sandbox | None: ...

    @abc.abstractmethod
    async def save(self, sandbox: Sandbox) -> None: ...

    @abc.abstractmethod
    async def remove(self, sandbox_id: str) -> None: ...

    @abc.abstractmethod
    async def list(self, state: SandboxState | None = None) -> list[Sandbox]: ...


@dataclass(frozen=True)
class StoredOutput:
    data: bytes
    truncated: bool
    size: int


class OutputLog(abc.ABC):
    """The output of detached scripts, kept (capped) where it survives a restart."""

    @abc.abstractmethod
    def sink(self, sandbox_id: str, limit_bytes: int) -> OutputSink:
        """A sink that appends to the sandbox's output, up to limit_bytes per stream."""

    @abc.abstractmethod
    async def read(self, sandbox_id: str, stream: Stream, offset: int = 0) -> StoredOutput: ...

    @abc.abstractmethod
    async def remove(self, sandbox_id: str) -> None: ...

    @abc.abstractmethod
    async def ids(self) -> set[str]:
        """Sandboxes with output kept."""


class PackageInstaller(abc.ABC):
    """Installs a checked requirement set into a folder that sandboxes mount read-only.

    Contract, for every implementation:
    - wheels only: no code of any package runs on the host;
    - the same set gives the same folder, built once however many ask for it at once; a
      set already built is returned without resolving it again;
    - a folder returned is complete, and a failed build leaves nothing behind;
    - `PackageResolutionFailed` says why a set cannot be installed (pip's own reason).
    """

    @abc.abstractmethod
    async def layer_for(self, requirements: RequirementSet) -> str:
        """A host folder holding the set, importable when put on PYTHONPATH."""

    @abc.abstractmethod
    async def readiness(self) -> list[str]:
        """Problems that stop the installer from installing now; empty when ready."""
