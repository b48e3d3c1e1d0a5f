"""Helpers of the lifecycle tests: a clock moved by hand, a fake runtime the tests steer, and
short ways to bring a sandbox into a state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import anyio

from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.domain.lifecycle import SandboxService
from sandbox.domain.model import Language, Limits, Outcome, Program, Sandbox, SandboxState
from sandbox.domain.ports import FILE_CHUNK_BYTES, OpenedFile, OutputSink

NewService = Callable[..., SandboxService]

LIMITS = Limits(timeout_s=30)


class ManualClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ControlledRuntime(FakeSandboxRuntime):
    """The fake runtime, plus what tests steer: its identity (as after an upgrade), and execs
    that, once held, wait inside the sandbox until released."""

    def __init__(self) -> None:
        super().__init__()
        self.version = "fake"
        self.exec_entered = asyncio.Event()
        self.exec_gate = asyncio.Event()
        self.exec_gate.set()

    @property
    def identity(self) -> dict[str, str]:
        return {"runtime": self.version, "rootfs": "fake"}

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


async def settled(service: SandboxService, sandbox_id: str) -> Sandbox:
    """The record once the sandbox has stopped running (its supervisor has recorded how)."""
    with anyio.fail_after(5):
        while True:
            sandbox = await service.get(sandbox_id)
            if sandbox.state not in (SandboxState.CREATING, SandboxState.RUNNING):
                return sandbox
            await asyncio.sleep(0.01)


async def session(service: SandboxService, idle_timeout_s: float | None = None) -> Sandbox:
    return await service.create_session(Language.PYTHON, LIMITS, idle_timeout_s=idle_timeout_s)


async def suspended_session(service: SandboxService) -> Sandbox:
    return await service.suspend((await session(service)).sandbox_id)


async def exited_script(service: SandboxService, source: str = "sys.exit(3)") -> Sandbox:
    sandbox = await service.run_detached(Language.PYTHON, source.encode(), LIMITS)
    return await settled(service, sandbox.sandbox_id)


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
