"""Disk work that can take long (removing a checkpoint of GiBs, maybe on a mounted bucket;
appending output to a slow or full disk) runs in worker threads, never on the event loop,
where it would stall every request and timer of the server.

Each test records the thread that does the work; no runsc is needed for these paths."""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.adapters.file_output_log import FileOutputLog
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.model import Stream
from sandbox.settings import Settings

pytestmark = pytest.mark.anyio

SANDBOX = "0123456789abcdef01234567"


class ThreadsSeen:
    """Whether each recorded call ran on the main thread (where the event loop runs)."""

    def __init__(self, under: Path) -> None:
        self.under = under
        self.calls: list[tuple[str, bool]] = []

    def recording(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path).startswith(str(self.under)):
                on_loop = threading.current_thread() is threading.main_thread()
                self.calls.append((name, on_loop))
            return real(path, *args, **kwargs)

        return wrapper

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    @property
    def on_the_loop(self) -> list[str]:
        return [name for name, on_loop in self.calls if on_loop]


@pytest.fixture
def seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadsSeen]:
    threads = ThreadsSeen(tmp_path)
    for module, name in ((shutil, "rmtree"), (os, "open"), (os, "stat"), (os, "chmod")):
        monkeypatch.setattr(module, name, threads.recording(name, getattr(module, name)))
    yield threads


@pytest.fixture
def runtime(tmp_path: Path) -> RunscSandboxRuntime:
    settings = dataclasses.replace(Settings.from_env({}), runtime="runsc",
                                   state_dir=tmp_path / "state")
    (settings.state_dir / "runsc").mkdir(parents=True)  # empty: no container to end
    return RunscSandboxRuntime(settings)


def a_checkpoint(runtime_state: Path) -> Path:
    image = runtime_state / "images" / SANDBOX  # where runsc checkpoint writes, locally
    image.mkdir(parents=True)
    (image / "checkpoint.img").write_bytes(b"\0" * 4096)
    return image


async def test_destroying_a_sandbox_removes_its_bundle_and_checkpoint_off_the_loop(
    runtime: RunscSandboxRuntime, tmp_path: Path, seen: ThreadsSeen
) -> None:
    image = a_checkpoint(tmp_path / "state")
    bundle = tmp_path / "state" / "bundles" / SANDBOX
    (bundle / "input").mkdir(parents=True)

    await runtime.destroy(SANDBOX)
    removals, on_the_loop = seen.names.count("rmtree"), seen.on_the_loop

    assert (removals, on_the_loop) == (2, [])
    assert not image.exists()
    assert not bundle.exists()


async def test_discarding_a_checkpoint_removes_it_off_the_loop(
    runtime: RunscSandboxRuntime, tmp_path: Path, seen: ThreadsSeen
) -> None:
    image = a_checkpoint(tmp_path / "state")

    await runtime.discard_checkpoint(str(image))
    await runtime.close()  # the removal runs in the background: closing waits for it
    removals, on_the_loop = seen.names.count("rmtree"), seen.on_the_loop

    assert (removals, on_the_loop) == (1, [])
    assert not image.exists()


async def test_the_output_sink_touches_the_disk_off_the_loop(
    tmp_path: Path, seen: ThreadsSeen
) -> None:
    outputs = FileOutputLog(tmp_path / "outputs")
    sink = outputs.sink(SANDBOX, limit_bytes=8)
    seen.calls.clear()  # making the folders, once per server and per sandbox, is quick

    for chunk in (b"hello ", b"world", b"!"):
        await sink.write(Stream.STDOUT, chunk)
    await sink.write(Stream.STDERR, b"oops")
    opened, on_the_loop = seen.names.count("open"), seen.on_the_loop
    stored = await outputs.read(SANDBOX, Stream.STDOUT)

    assert (opened, on_the_loop) == (4, [])  # two chunks, the marker, and stderr's chunk
    assert (stored.data, stored.truncated) == (b"hello wo", True)


async def test_a_full_stream_is_dropped_without_touching_the_disk(
    tmp_path: Path, seen: ThreadsSeen
) -> None:
    sink = FileOutputLog(tmp_path / "outputs").sink(SANDBOX, limit_bytes=4)
    await sink.write(Stream.STDOUT, b"12345")
    touched = len(seen.calls)

    for _ in range(100):
        await sink.write(Stream.STDOUT, b"more")

    assert len(seen.calls) == touched
