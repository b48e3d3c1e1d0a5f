"""Measure suspend and restore of managed sandboxes on real gVisor, through the lifecycle
service (checkpoint, record, output log and all), for a small Python process and for one
holding 256 MiB of touched memory.

A measurement, not a test: it prints a table and never fails on the figures. It needs root,
runsc and the rootfs; it uses a temporary state folder and its own cgroup parent, so a server
or tests running beside it are left alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from sandbox.adapters.embedded import embedded_state
from sandbox.adapters.file_output_log import FileOutputLog
from sandbox.adapters.runsc import cgroups
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.lifecycle.creation import run_detached
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.reading import read_output
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.shutdown import shut_down
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.model import Language, Limits, SandboxState
from sandbox.settings import Settings

CGROUP_PARENT = "gvisor-sandbox-measure"
READY_TIMEOUT_S = 120.0
MIB = 2**20

SMALL = b"""\
import time
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""
# Every page written, with data deflate cannot shrink (a random 1 MiB block repeats at a
# distance far beyond its 32 KiB window), so the image is as large as the memory really is.
HOLDING_256_MIB = b"""\
import os, time
block = os.urandom(2**20)
data = bytearray(block * 256)
print("ready", len(data), flush=True)
while True:
    time.sleep(0.1)
"""


@dataclass(frozen=True)
class Case:
    name: str
    source: bytes
    limits: Limits


@dataclass(frozen=True)
class Result:
    case: Case
    # The first suspend follows `runsc run`; the others follow a `runsc restore`, whose
    # stopped container takes longer to delete (see the module's notes in the report).
    first_suspend_s: float
    suspend_s: list[float]
    restore_s: list[float]
    image_bytes: list[int]


async def wait_until_ready(sandboxes: Sandboxes, sandbox_id: str) -> None:
    async with asyncio.timeout(READY_TIMEOUT_S):
        while True:
            sandbox, stdout, stderr = await read_output(sandboxes, sandbox_id)
            if stdout.data.startswith(b"ready"):
                return
            if sandbox.state is not SandboxState.RUNNING:
                raise RuntimeError(f"{sandbox_id} ended before it was ready: {sandbox.reason}; "
                                   f"{stderr.data.decode(errors='replace')[-500:]}")
            await asyncio.sleep(0.1)


def folder_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


async def measure(sandboxes: Sandboxes, case: Case, rounds: int) -> Result:
    """Suspend once after the start, then `rounds` times restore and suspend again."""
    sandbox = await run_detached(sandboxes, Language.PYTHON, case.source, case.limits)
    sandbox_id = sandbox.sandbox_id
    suspend_s, restore_s, image_bytes = [], [], []
    try:
        await wait_until_ready(sandboxes, sandbox_id)
        first_suspend_s, image = await timed_suspend(sandboxes, sandbox_id)
        image_bytes.append(image)
        for _round in range(rounds):
            started = time.perf_counter()
            restored = await restore_sandbox(sandboxes, sandbox_id)
            restore_s.append(time.perf_counter() - started)
            if restored.state is not SandboxState.RUNNING:
                raise RuntimeError(f"restore left the sandbox {restored.state.value}")
            # Let the restored sandbox settle, as a user's next call would.
            await asyncio.sleep(0.5)
            seconds, image = await timed_suspend(sandboxes, sandbox_id)
            suspend_s.append(seconds)
            image_bytes.append(image)
    finally:
        await delete_sandbox(sandboxes, sandbox_id)
    return Result(case, first_suspend_s, suspend_s, restore_s, image_bytes)


async def timed_suspend(sandboxes: Sandboxes, sandbox_id: str) -> tuple[float, int]:
    started = time.perf_counter()
    suspended = await suspend_sandbox(sandboxes, sandbox_id)
    seconds = time.perf_counter() - started
    if suspended.checkpoint is None:
        raise RuntimeError("a suspended sandbox has no checkpoint")
    manifest = await sandboxes.images.manifest(suspended.checkpoint)
    if manifest is None:
        raise RuntimeError("a suspended sandbox's image has no manifest")
    return seconds, manifest.size


@contextlib.asynccontextmanager
async def lifecycle(
    settings: Settings,
) -> AsyncIterator[tuple[Sandboxes, RunscSandboxRuntime]]:
    runtime = RunscSandboxRuntime(settings)
    await runtime.start()
    async with embedded_state(settings) as state:
        sandboxes = Sandboxes(runtime, state.store, FileOutputLog(settings.state_dir / "outputs"),
                              dataclasses.replace(settings.lifecycle_policy(),
                                                  suspend_on_shutdown=False), state.shared)
        try:
            yield sandboxes, runtime
        finally:
            await shut_down(sandboxes)
            await runtime.close()
        for sandbox_id in await runtime.leftover_ids():
            await runtime.destroy(sandbox_id)


def report(results: list[Result], rounds: int, version: str) -> None:
    print()
    print(f"through Sandboxes; {os.cpu_count()} cores; runsc {version}; "
          f"times in ms, median (min-max) of {rounds}")
    print(f"{'case':<36}{'1st suspend':>12}{'suspend after restore':>24}"
          f"{'restore':>18}{'image MiB':>11}")
    for result in results:
        print(f"{result.case.name:<36}{1000 * result.first_suspend_s:>12.0f}"
              f"{spread(result.suspend_s):>24}{spread(result.restore_s):>18}"
              f"{statistics.median(result.image_bytes) / MIB:>11.1f}")


def spread(seconds: list[float]) -> str:
    ms = [1000 * value for value in seconds]
    return f"{statistics.median(ms):.0f} ({min(ms):.0f}-{max(ms):.0f})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Suspend and restore times of sandboxes.")
    parser.add_argument("--rounds", type=int, default=5, choices=range(1, 51),
                        metavar="1..50", help="restore/suspend rounds per case (default 5)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("measure_suspend: run as root (runsc needs it)", file=sys.stderr)
        return 2
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    limits = dataclasses.replace(Settings().default_limits(), timeout_s=3600)
    cases = [
        Case("small Python process (512 MiB)", SMALL, limits),
        Case("Python holding 256 MiB (1024 MiB)", HOLDING_256_MIB,
             dataclasses.replace(limits, memory_mb=1024)),
    ]
    with tempfile.TemporaryDirectory(prefix="sandbox-measure-") as tmp:
        settings = dataclasses.replace(Settings.from_env(), runtime="runsc",
                                       state_dir=Path(tmp, "state"), cgroup_parent=CGROUP_PARENT)

        async def run() -> tuple[list[Result], str]:
            async with lifecycle(settings) as (sandboxes, runtime):
                results = []
                for case in cases:
                    print(f"measuring {case.name}...", flush=True)
                    results.append(await measure(sandboxes, case, args.rounds))
                return results, runtime.identity["version"]

        try:
            results, version = asyncio.run(run())
        finally:
            cgroups.remove_parent(CGROUP_PARENT)
    report(results, args.rounds, version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
