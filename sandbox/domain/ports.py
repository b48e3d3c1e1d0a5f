"""The ports the use cases speak to. Adapters implement them; the fakes live in adapters/."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox.domain.model import (
    FileEntry,
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


# The most a file transfer holds of a file at once, per step: files move in chunks of at most
# this size, so a transfer's memory stays a few chunks whatever the file's size.
FILE_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class OpenedFile:
    """A file being read out of a sandbox: its size, known before its first byte, then its
    bytes, exactly `size` of them, in chunks of at most FILE_CHUNK_BYTES. The iterator raises
    if the sandbox gives fewer (a SandboxError), so a cut transfer is never taken for a whole
    one."""

    size: int
    chunks: AsyncIterator[bytes]


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

    @abc.abstractmethod
    def limit_layers(self) -> dict[str, list[str]]:
        """Which layers hold each limit on this host, strongest first (e.g. "memory":
        ["cgroup"], "cpu": []): an empty list means the limit is not held here."""

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
    async def write_file(self, sandbox_id: str, path: str, chunks: AsyncIterable[bytes]) -> int:
        """Write a file inside a running sandbox from `chunks`, taken as they come (never all
        at once), as the sandbox's user; parents are made. Returns the file's size.

        The file appears whole or not at all: when `chunks` raises (too large, the client
        left) or the write fails, the exception propagates, nothing new is left at `path`
        and a file that was there is unchanged. Nothing is read from `chunks` before the
        sandbox is ready to take the file, so a path that cannot be written is refused
        before any of it arrives."""

    @abc.abstractmethod
    def read_file(
        self, sandbox_id: str, path: str, limit_bytes: int
    ) -> AbstractAsyncContextManager[OpenedFile]:
        """Open a file inside a running sandbox for reading, as the sandbox's user.

        Entering raises before any byte is read: FileNotFoundInSandbox, PayloadTooLarge for
        a file larger than limit_bytes, InvalidRequest for a folder or a file the user may
        not read. Leaving ends whatever reads the file in the sandbox, however it is left
        (read to the end, abandoned half-way, cancelled)."""

    @abc.abstractmethod
    async def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]: ...

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
    - every package the set resolves to, dependencies included, is allowed by the server's
      package policy, checked before anything is installed (`PackageResolutionFailed`
      naming the one refused);
    - sets that resolve to the same releases share one folder, built once however many ask
      for it at once; a set already built is returned without resolving it again;
    - a folder returned is complete, and a failed build leaves nothing behind;
    - `PackageResolutionFailed` says why a set cannot be installed (pip's own reason);
      `AtCapacity` when too many builds are already waiting.
    """

    @abc.abstractmethod
    async def layer_for(self, requirements: RequirementSet) -> str:
        """A host folder holding the set, importable when put on PYTHONPATH."""

    @abc.abstractmethod
    async def readiness(self) -> list[str]:
        """Problems that stop the installer from installing now; empty when ready."""
