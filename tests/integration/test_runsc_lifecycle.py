"""The runtime's own life: readiness, failures of runsc, cancellation and concurrency."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from integration.support import leftovers, runtime_settings, started_runtime
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime, local_images
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle.execution import run_script
from sandbox.domain.model import IDLE, Language, Limits, SandboxSpec, Stream
from sandbox.domain.output import ExecutionEvents, OutputCapture
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]


async def test_a_healthy_runtime_is_ready_and_names_its_runsc_and_rootfs(
    runtime: RunscSandboxRuntime, settings: Settings
) -> None:
    problems = await runtime.readiness()

    assert problems == []
    assert runtime.identity["version"].startswith("0.0~")
    assert runtime.identity["rootfs"] == Path(f"{settings.rootfs_dir}.identity").read_text().strip()


class FirstOutput(ExecutionEvents):
    def __init__(self) -> None:
        self.seen = asyncio.Event()

    async def output(self, stream: Stream, text: str) -> None:
        self.seen.set()


async def test_cancelling_an_execution_ends_its_sandbox_and_leaves_nothing(
    runtime: RunscSandboxRuntime, limits: Limits, settings: Settings
) -> None:
    events = FirstOutput()
    execution = asyncio.create_task(
        run_script(runtime, Language.BASH, b"echo started\nsleep 1000\n", limits, events)
    )
    async with asyncio.timeout(15):
        await events.seen.wait()
    await asyncio.sleep(0.5)
    running = leftovers(settings)

    execution.cancel()  # what a client that goes away does to its request

    with pytest.raises(asyncio.CancelledError):
        await execution
    assert any(item.startswith("container ") for item in running)
    assert leftovers(settings) == []


async def test_a_missing_runsc_is_reported_by_readiness_and_fails_runs_as_runtime_failure(
    tmp_path: Path, limits: Limits
) -> None:
    missing = tmp_path / "no-such-runsc"
    settings = runtime_settings(tmp_path / "broken", runsc_path=str(missing))

    async with started_runtime(settings) as broken:
        problems = await broken.readiness()
        with pytest.raises(RuntimeFailure, match="no-such-runsc"):
            await run_script(broken, Language.PYTHON, b"print(1)", limits)
        left = leftovers(settings)

    assert [problem for problem in problems if str(missing) in problem] != []
    assert left == []


async def test_a_missing_rootfs_is_reported_by_readiness_and_fails_runs_as_runtime_failure(
    tmp_path: Path, limits: Limits
) -> None:
    settings = runtime_settings(tmp_path / "broken", rootfs_dir=tmp_path / "no-rootfs")

    async with started_runtime(settings) as broken:
        problems = await broken.readiness()
        # Not mistaken for a script that exited 128: runsc's own error is read from its log.
        with pytest.raises(RuntimeFailure, match="runsc failed: .*root"):
            await run_script(broken, Language.PYTHON, b"print(1)", limits)
        left = leftovers(settings)

    assert [problem for problem in problems if "no-rootfs" in problem] != []
    assert left == []


async def test_four_executions_at_once_each_get_their_own_output(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    sources = [f"import time\ntime.sleep(0.3)\nprint('run {n}')\n".encode() for n in range(4)]

    results = await asyncio.gather(
        *(run_script(runtime, Language.PYTHON, source, limits) for source in sources)
    )

    assert [result.stdout.text for result in results] == [f"run {n}\n" for n in range(4)]
    assert [result.outcome.exit_code for result in results] == [0, 0, 0, 0]
    assert len({result.sandbox_id for result in results}) == 4


async def test_a_checkpoint_is_sealed_measured_and_removed_off_the_event_loop(
    runtime: RunscSandboxRuntime, limits: Limits, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An image holds up to the memory limit, maybe on a mounted bucket: making it private,
    measuring it and removing it must not stall the server's event loop."""
    sandbox_id = new_sandbox_id()
    await runtime.launch(SandboxSpec(sandbox_id=sandbox_id, limits=limits), IDLE,
                         OutputCapture(1024))
    checkpoints = str(local_images(settings))  # where runsc writes, before a publish
    calls: list[tuple[str, bool]] = []

    def recording(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path).startswith(checkpoints):
                calls.append((name, threading.current_thread() is threading.main_thread()))
            return real(path, *args, **kwargs)
        return wrapper

    for module, name in ((shutil, "rmtree"), (os, "chmod"), (os, "stat")):
        monkeypatch.setattr(module, name, recording(name, getattr(module, name)))
    try:
        image = await runtime.checkpoint(sandbox_id)
        await runtime.discard_checkpoint(image)
        await runtime.destroy(sandbox_id)  # waits for the removal, done in the background
    finally:
        monkeypatch.undo()
        await runtime.destroy(sandbox_id)

    assert {"chmod", "stat", "rmtree"} <= {name for name, _ in calls}
    assert [name for name, on_loop in calls if on_loop] == []
    assert not Path(image).exists()
