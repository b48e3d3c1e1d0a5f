"""The memory watch that holds the limit on hosts without cgroups, with readings made up."""

from __future__ import annotations

import asyncio

import pytest

from sandbox.adapters.runsc.memory import MemoryWatch

pytestmark = pytest.mark.anyio

LIMIT = 100


class Sandboxes:
    def __init__(self, readings: list[int | None]) -> None:
        self.readings = readings
        self.killed: list[str] = []

    async def usage(self, sandbox_id: str) -> int | None:
        return self.readings.pop(0) if self.readings else LIMIT // 2

    async def kill(self, sandbox_id: str) -> None:
        self.killed.append(sandbox_id)


async def watched(sandboxes: Sandboxes, polls: int) -> MemoryWatch:
    watch = MemoryWatch(sandboxes.usage, sandboxes.kill, poll_s=0)
    watch.start("sandbox", LIMIT)
    for _ in range(polls):
        await asyncio.sleep(0)
    return watch


async def test_a_sandbox_past_its_limit_is_killed_and_its_verdict_is_out_of_memory() -> None:
    sandboxes = Sandboxes([10, 50, LIMIT + 1])

    watch = await watched(sandboxes, polls=20)

    assert sandboxes.killed == ["sandbox"]
    assert watch.killed("sandbox") is True


async def test_a_sandbox_at_its_limit_or_unreadable_is_left_alone() -> None:
    sandboxes = Sandboxes([LIMIT, None, None, LIMIT])

    watch = await watched(sandboxes, polls=20)
    watch.close()

    assert sandboxes.killed == []
    assert watch.killed("sandbox") is False


async def test_a_forgotten_sandbox_is_no_longer_out_of_memory() -> None:
    sandboxes = Sandboxes([LIMIT * 2])
    watch = await watched(sandboxes, polls=20)

    watch.forget("sandbox")

    assert sandboxes.killed == ["sandbox"]
    assert watch.killed("sandbox") is False
