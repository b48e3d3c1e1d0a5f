"""What the runsc tiers share: whether they can run here, a started runtime, the leak check."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from sandbox.adapters.embedded import embedded_state
from sandbox.adapters.file_output_log import FileOutputLog
from sandbox.adapters.runsc import cgroups
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.lifecycle import work
from sandbox.domain.lifecycle.sandboxes import LifecyclePolicy, Sandboxes
from sandbox.domain.lifecycle.shutdown import shut_down
from sandbox.domain.ports import FILE_CHUNK_BYTES, OpenedFile
from sandbox.settings import Settings

CGROUP_ROOT = Path("/sys/fs/cgroup")


def runsc_required() -> bool:
    """In CI (or when asked) a machine that cannot run the runsc tests fails them."""
    return (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("SANDBOX_REQUIRE_RUNSC") == "1"
    )


def runsc_problem(settings: Settings) -> str | None:
    if os.geteuid() != 0:
        return "the runsc tests need root"
    if shutil.which(settings.runsc_path) is None:
        return f"runsc ({settings.runsc_path}) is not installed; run `make host`"
    if not (settings.rootfs_dir / "usr/bin/python3").exists():
        return f"no sandbox rootfs at {settings.rootfs_dir}; run `make rootfs`"
    return None


def require_runsc() -> None:
    problem = runsc_problem(Settings.from_env())
    if problem is None:
        return
    if runsc_required():
        pytest.fail(f"{problem} (CI=true or SANDBOX_REQUIRE_RUNSC=1: not skipping)", pytrace=False)
    pytest.skip(problem)


def runtime_settings(state_dir: Path, **overrides: Any) -> Settings:
    """Settings of one test's runtime: its own state folder and its own cgroup parent, so
    that the leak check sees only what this test made (other suites may run sandboxes)."""
    return dataclasses.replace(
        Settings.from_env(),
        runtime="runsc",
        state_dir=state_dir,
        cgroup_parent=f"gvisor-sandbox-test-{secrets.token_hex(4)}",
        **overrides,
    )


@contextlib.asynccontextmanager
async def started_runtime(
    settings: Settings, clean_up: bool = True
) -> AsyncIterator[RunscSandboxRuntime]:
    """A started runtime. Sandboxes outlive a runtime's close, so on the way out (after the
    leak check has had its say) whatever is left in its state folder is destroyed, unless
    another runtime on the same folder stays in charge of it (clean_up=False)."""
    runtime = RunscSandboxRuntime(settings)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.close()
        if clean_up:
            # A runtime that cannot run runsc has nothing to clean up.
            with contextlib.suppress(OSError, RuntimeFailure):
                for sandbox_id in await runtime.leftover_ids():
                    await runtime.destroy(sandbox_id)
            cgroups.remove_parent(settings.cgroup_parent)


@contextlib.asynccontextmanager
async def managed_sandboxes(
    runtime: RunscSandboxRuntime, settings: Settings, policy: LifecyclePolicy | None = None
) -> AsyncIterator[Sandboxes]:
    """The lifecycle service as the server builds it, on this runtime and state folder."""
    async with embedded_state(settings) as state:
        sandboxes = Sandboxes(runtime, state.store, FileOutputLog(settings.state_dir / "outputs"),
                              policy or settings.lifecycle_policy(), state.shared)
        try:
            yield sandboxes
        finally:
            await shut_down(sandboxes)


def leftovers(settings: Settings) -> list[str]:
    """Everything a runtime with these settings still has on the host; empty when clean."""
    runsc_root = settings.state_dir / "runsc"
    found = [f"container {name}" for name in _listed_containers(runsc_root)]
    found.extend(f"record {sandbox_id}" for sandbox_id in _recorded(settings))
    for folder in ("bundles", "images", "image-copies", "checkpoints", "outputs"):
        path = settings.state_dir / folder
        if path.is_dir():
            found.extend(f"{folder}/{entry.name}" for entry in path.iterdir())
    found.extend(f"cgroup {path}" for path in _cgroup_children(settings.cgroup_parent))
    found.extend(f"process {line}" for line in processes_mentioning(str(runsc_root)))
    return found


def _recorded(settings: Settings) -> list[str]:
    database = settings.state_dir / "sandboxes.db"
    if not database.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return [row[0] for row in db.execute("SELECT sandbox_id FROM sandboxes")]


def _listed_containers(runsc_root: Path) -> list[str]:
    if not runsc_root.is_dir():
        return []
    runsc = shutil.which("runsc") or "runsc"
    listed = subprocess.run(
        [runsc, f"--root={runsc_root}", "list", "--quiet"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return listed.stdout.split()


def _cgroup_parents(parent: str) -> list[Path]:
    # cgroup v1 has one tree per controller; v2 has one tree.
    return [path for path in (*CGROUP_ROOT.glob(f"*/{parent}"), CGROUP_ROOT / parent)
            if path.is_dir()]


def _cgroup_children(parent: str) -> list[Path]:
    return [child for path in _cgroup_parents(parent)
            for child in path.iterdir() if child.is_dir()]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # it ended while we looked
        if text in command:
            found.append(f"{cmdline.parent.name}: {command[:200]}")
    return found


async def chunks(data: bytes, size: int = FILE_CHUNK_BYTES) -> AsyncIterator[bytes]:
    """A file to upload, as a client's body arrives: in pieces."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def whole(opening: AbstractAsyncContextManager[OpenedFile]) -> bytes:
    """A downloaded file, read to its end."""
    async with opening as opened:
        return b"".join([chunk async for chunk in opened.chunks])


async def write_bytes(sandboxes: Sandboxes, sandbox_id: str, path: str, data: bytes) -> int:
    """An upload of `data` through the use case, in chunks as a client's body comes."""
    return await work.write_file(sandboxes, sandbox_id, path, chunks(data))


async def read_bytes(sandboxes: Sandboxes, sandbox_id: str, path: str) -> bytes:
    """A download through the use case, read to its end."""
    return await whole(work.read_file(sandboxes, sandbox_id, path))
