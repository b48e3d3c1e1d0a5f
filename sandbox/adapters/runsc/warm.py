"""Warm sandboxes on runsc: what runs in them before a request, and how it is handed one.

A warm Python sandbox holds the runner (`inside/runner.py`), started by the agent with a
control pipe: it says it is ready with a marker on its stderr, which `RunnerSink` takes off
that stream; from the request on, its output goes to the request's sink. A warm Bash
sandbox holds nothing but its agent: the script is spawned when it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from sandbox.adapters.runsc import oci
from sandbox.adapters.runsc.agent_channel import AgentChannel
from sandbox.adapters.runsc.inside import runner as layout
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.model import Language, Stream
from sandbox.domain.ports import OutputSink

RUNNER = f"{oci.AGENT_DIR}/runner.py"
# What the runner printed instead of its marker, kept for the error (a traceback, usually).
PROBLEM_BYTES = 2000
# Output that arrives between the marker and the request (none, from a sound runner).
MAX_HELD = 64 * 1024
# What the control pipe carries: the runner only waits for it to close.
GO = b"run"


class Nowhere(OutputSink):
    """The sink of a program that does not exist (a warm sandbox has no main program)."""

    async def write(self, stream: Stream, data: bytes) -> None:
        return None


def runner_argv(preimport: tuple[str, ...]) -> list[str]:
    return ["python3", RUNNER, ",".join(preimport)]


@dataclass
class WarmSandbox:
    """What a warm sandbox waits with: its language, and its runner's tag and sink (Python)."""

    language: Language
    tag: int | None = None
    sink: RunnerSink | None = None


class RunnerSink(OutputSink):
    """The runner's output: first its ready marker, alone on stderr; then, once a request
    is attached, everything goes to that request's sink, in order."""

    def __init__(self) -> None:
        self.settled = asyncio.Event()  # ready, or failed before it was
        self.problem: str | None = None
        self._seen = bytearray()
        self._held: list[tuple[Stream, bytes]] = []
        self._target: OutputSink | None = None

    @property
    def ready(self) -> bool:
        return self.settled.is_set() and self.problem is None

    async def write(self, stream: Stream, data: bytes) -> None:
        if self._target is not None:
            await self._target.write(stream, data)
        elif not self.settled.is_set():
            self._before_ready(stream, data)
        elif self.problem is None and sum(len(held) for _, held in self._held) < MAX_HELD:
            self._held.append((stream, data))

    def _before_ready(self, stream: Stream, data: bytes) -> None:
        self._seen += data
        if stream is Stream.STDERR and layout.READY.startswith(bytes(self._seen)):
            if len(self._seen) == len(layout.READY):
                self.settled.set()
            return
        self.problem = bytes(self._seen[:PROBLEM_BYTES]).decode("utf-8", "replace")
        self.settled.set()

    async def attach(self, sink: OutputSink) -> None:
        """From now on, the runner's output is the request's."""
        held, self._held = self._held, []
        for stream, data in held:
            await sink.write(stream, data)
        self._target = sink


async def until_ready(channel: AgentChannel, tag: int, sink: RunnerSink, timeout_s: float) -> None:
    """Until the runner says it is ready; RuntimeFailure, saying why, if it ends, prints
    something else or takes too long."""
    ready = asyncio.ensure_future(sink.settled.wait())
    ended = asyncio.ensure_future(channel.wait(tag))
    try:
        await asyncio.wait({ready, ended}, timeout=timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (ready, ended):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeFailure):
                await task
    if sink.ready:
        return
    if sink.problem is not None:
        raise RuntimeFailure(f"the warm runner failed to start: {sink.problem.strip()}")
    if ended.done():
        raise RuntimeFailure("the warm runner ended before it was ready")
    raise RuntimeFailure(f"the warm runner was not ready within {timeout_s:g} s")
