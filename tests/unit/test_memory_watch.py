"""The memory watch that holds the limit on hosts without cgroups: with readings of gVisor's
accounting made up, and with a real process holding a memory file named as gVisor names its
own (the watch reads its size through /proc and kills the process through a pidfd)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from sandbox.adapters.runsc.memory import MemoryWatch, committed_bytes, memory_file_of

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
    watch = MemoryWatch(sandboxes.usage, sandboxes.kill, poll_s=0, fast_poll_s=0)
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


# A stand-in sentry: holds a memfd named as gVisor's, of the size given, and waits.
SENTRY = """
import os, sys, time
fd = os.memfd_create("runsc-memory")
os.write(fd, b"x" * int(sys.argv[1]))
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def sentry(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", SENTRY, str(request.param)],
                               stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    yield process
    process.kill()
    process.wait()
    process.stdout.close()


async def watched_sentry(
    process: subprocess.Popen[bytes], limit: int, for_s: float
) -> tuple[MemoryWatch, Sandboxes]:
    sandboxes = Sandboxes([])  # the accounting says half the limit: only the file can tell

    async def pid(sandbox_id: str) -> int:
        return process.pid

    watch = MemoryWatch(sandboxes.usage, sandboxes.kill, poll_s=60, sentry_pid=pid,
                        fast_poll_s=0.01)
    watch.start("sandbox", limit)
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline and process.poll() is None:  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # a process ending is no event to wait on
    return watch, sandboxes


@pytest.mark.parametrize("sentry", [3 * 1024 * 1024], indirect=True)
async def test_a_memory_file_past_the_limit_gets_its_sentry_killed_at_once(
    sentry: subprocess.Popen[bytes],
) -> None:
    watch, sandboxes = await watched_sentry(sentry, limit=2 * 1024 * 1024, for_s=5)
    watch.close()

    assert sentry.wait(timeout=5) == -signal.SIGKILL
    assert watch.killed("sandbox") is True
    assert sandboxes.killed == ["sandbox"]  # then runsc ends the rest


@pytest.mark.parametrize("sentry", [1024 * 1024], indirect=True)
async def test_a_memory_file_within_the_limit_is_left_alone(
    sentry: subprocess.Popen[bytes],
) -> None:
    watch, sandboxes = await watched_sentry(sentry, limit=2 * 1024 * 1024, for_s=0.3)
    watch.close()

    assert sentry.poll() is None
    assert watch.killed("sandbox") is False


@pytest.mark.parametrize("sentry", [1024 * 1024], indirect=True)
def test_the_memory_file_is_found_by_its_name_and_read_by_its_blocks(
    sentry: subprocess.Popen[bytes],
) -> None:
    found = memory_file_of(sentry.pid)

    assert found is not None
    assert committed_bytes(found) == 1024 * 1024
    assert memory_file_of(1) is None  # init holds no such file
