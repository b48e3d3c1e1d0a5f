"""The ports the use cases speak to. Adapters implement them; the fakes live in adapters/."""

from __future__ import annotations

import abc

from sandbox.domain.model import Outcome, Program, SandboxSpec, Stream


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
