"""A managed sandbox as the service holds it: the `runsc run` (or `restore`) process that
supervises it, and the channel to the agent that is its init."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from sandbox.adapters.runsc.agent_channel import MAX_SYNC_SCAN, AgentChannel
from sandbox.adapters.runsc.kernels import Kernels
from sandbox.adapters.runsc.process import Pipe, spawn_with_stdin

log = structlog.get_logger(__name__)

# What the agent itself writes to its stderr (a traceback if it crashes) is logged, this much.
AGENT_STDERR_BYTES = 8 * 1024


@dataclass
class Supervised:
    sandbox_id: str
    process: asyncio.subprocess.Process
    channel: AgentChannel
    # The environment every process started in it gets (the sandbox's, with its packages).
    env: list[str]
    # gVisor's platform it runs on; a checkpoint of it must be restored on the same.
    platform: str = ""
    # Whether the sandbox's own program (a detached script) runs as the agent's main process.
    main: bool = False
    # Its code contexts' interpreters (set by the runtime, which knows how to end a sandbox).
    kernels: Kernels | None = field(default=None, repr=False)
    # The pipe the channel reads: closed here, since a loop may keep a pipe open after its
    # end (uvloop does, when the reader asks it to at EOF) and then refuse to close itself.
    frames: Pipe | None = field(default=None, repr=False)
    stderr: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def ending(self) -> bool:
        """Set when the service itself ends it (checkpoint, destroy): its end is then no
        failure. The channel knows it too, so its pipe closing is no warning."""
        return self.channel.ending

    @ending.setter
    def ending(self, value: bool) -> None:
        self.channel.ending = value

    async def detach(self) -> None:
        """Stop listening; the sandbox runs on without us (the server is stopping)."""
        if self.kernels is not None:
            await self.kernels.close()
        await self.channel.close()
        if self.frames is not None:
            self.frames.transport.close()
        if self.stderr is not None:
            self.stderr.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.stderr

    async def close(self, grace_s: float) -> None:
        """Stop listening and wait (boundedly) for runsc to exit; the caller has ended the
        sandbox or checkpointed it."""
        self.ending = True
        await self.detach()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self.process.wait()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


async def start_supervised(
    sandbox_id: str,
    argv: list[str],
    env: list[str],
    on_broken: Callable[[str], Awaitable[None]],
) -> Supervised:
    """Start `runsc run` or `runsc restore` of an agent sandbox, with our pipes as its stdio.
    The caller starts the channel (a new sandbox) or resumes it (a restored one)."""
    process, writer, stdout, stderr = await spawn_with_stdin(argv, stdout_limit=MAX_SYNC_SCAN)
    channel = AgentChannel(sandbox_id, writer, stdout.reader, on_broken)
    supervised = Supervised(sandbox_id, process, channel, env, frames=stdout)
    supervised.stderr = asyncio.create_task(_log_stderr(sandbox_id, stderr))
    return supervised


async def _log_stderr(sandbox_id: str, pipe: Pipe) -> None:
    logged = 0
    try:
        while chunk := await pipe.reader.read(4096):
            if logged < AGENT_STDERR_BYTES:
                text = chunk[:AGENT_STDERR_BYTES - logged].decode("utf-8", "replace")
                log.warning("agent.stderr", sandbox_id=sandbox_id, text=text)
                logged += len(chunk)
    finally:
        pipe.transport.close()
