"""Helpers of the lifecycle tests: a clock moved by hand, a fake runtime the tests steer, and
short ways to bring a sandbox into a state."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio

from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.domain.lifecycle import work
from sandbox.domain.lifecycle.creation import create_session, run_detached
from sandbox.domain.lifecycle.sandboxes import LifecyclePolicy, Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.lifecycle.work import exec_in_sandbox
from sandbox.domain.model import (
    ExecutionResult,
    Language,
    Limits,
    Outcome,
    Program,
    Sandbox,
    SandboxSpec,
    SandboxState,
)
from sandbox.domain.ports import FILE_CHUNK_BYTES, OpenedFile, OutputSink
from sandbox.settings import Settings

NewSandboxes = Callable[..., Sandboxes]

# The one source of every default; tests change what they need from there.
DEFAULTS = Settings()


def limits(**changes: Any) -> Limits:
    return dataclasses.replace(DEFAULTS.default_limits(), **changes)


def policy(**changes: Any) -> LifecyclePolicy:
    """The default policy, but without the graceful suspend at shutdown unless asked for:
    shutting down then models a crash, which is what the restart tests need."""
    return dataclasses.replace(DEFAULTS.lifecycle_policy(),
                               **{"suspend_on_shutdown": False, **changes})


LIMITS = limits(timeout_s=30)


class ManualClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ControlledRuntime(FakeSandboxRuntime):
    """The fake runtime, plus what tests steer: its identity (as after an upgrade), and execs
    that, once held, wait inside the sandbox until released; and what it was asked to launch."""

    def __init__(self, image_dir: Path | None = None) -> None:
        super().__init__(image_dir)
        self.launched: list[tuple[SandboxSpec, Program]] = []
        self.version = "fake"
        self.exec_entered = asyncio.Event()
        self.exec_gate = asyncio.Event()
        self.exec_gate.set()

    @property
    def identity(self) -> dict[str, str]:
        return {"runtime": self.version, "rootfs": "fake"}

    async def launch(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> None:
        self.launched.append((spec, program))
        await super().launch(spec, program, sink)

    def hold_execs(self) -> None:
        self.exec_entered.clear()
        self.exec_gate.clear()

    def release_execs(self) -> None:
        self.exec_gate.set()

    async def exec(
        self, sandbox_id: str, program: Program, sink: OutputSink, stdin: bytes, timeout_s: float
    ) -> Outcome:
        self.exec_entered.set()
        await self.exec_gate.wait()
        return await super().exec(sandbox_id, program, sink, stdin, timeout_s)


async def settled(sandboxes: Sandboxes, sandbox_id: str) -> Sandbox:
    """The record once the sandbox has stopped running (its supervisor has recorded how)."""
    with anyio.fail_after(5):
        while True:
            sandbox = await sandboxes.get(sandbox_id)
            if sandbox.state not in (SandboxState.CREATING, SandboxState.RUNNING):
                return sandbox
            await asyncio.sleep(0.01)


async def session(sandboxes: Sandboxes, idle_timeout_s: float | None = None) -> Sandbox:
    return await create_session(sandboxes, Language.PYTHON, LIMITS, idle_timeout_s=idle_timeout_s)


async def suspended_session(sandboxes: Sandboxes) -> Sandbox:
    return await suspend_sandbox(sandboxes, (await session(sandboxes)).sandbox_id)


async def exited_script(sandboxes: Sandboxes, source: str = "sys.exit(3)") -> Sandbox:
    sandbox = await run_detached(sandboxes, Language.PYTHON, source.encode(), LIMITS)
    return await settled(sandboxes, sandbox.sandbox_id)


def python(source: str) -> Program:
    return Program.script(Language.PYTHON, source.encode())


async def chunks(data: bytes, size: int = FILE_CHUNK_BYTES) -> AsyncIterator[bytes]:
    """A file to upload, as a client's body arrives: in pieces."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def whole(opening: AbstractAsyncContextManager[OpenedFile]) -> bytes:
    """A downloaded file, read to its end."""
    async with opening as opened:
        return b"".join([chunk async for chunk in opened.chunks])
async def run_python(sandboxes: Sandboxes, sandbox_id: str, source: str = "") -> ExecutionResult:
    """An exec of a Python script in the sandbox, with no stdin and its default timeout."""
    return await exec_in_sandbox(sandboxes, sandbox_id, python(source), b"", None)


async def write_bytes(sandboxes: Sandboxes, sandbox_id: str, path: str, data: bytes) -> int:
    """An upload of `data` through the use case, in chunks as a client's body comes."""
    return await work.write_file(sandboxes, sandbox_id, path, chunks(data))


async def read_bytes(sandboxes: Sandboxes, sandbox_id: str, path: str) -> bytes:
    """A download through the use case, read to its end."""
    return await whole(work.read_file(sandboxes, sandbox_id, path))
