"""The default cgroup parent on the real cgroup tree: named per state folder, so a restart
reconciles its own leftovers and a new state folder at the same path takes none of them."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox.adapters.runsc import cgroups
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.model import Language, Limits, Program, SandboxSpec
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]


@contextlib.asynccontextmanager
async def default_parent_runtime(state_dir: Path, base: Settings) -> AsyncIterator[
    RunscSandboxRuntime
]:
    """A started runtime with SANDBOX_CGROUP_PARENT unset."""
    settings = dataclasses.replace(base, state_dir=state_dir, cgroup_parent="")
    runtime = RunscSandboxRuntime(settings)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.close()


def a_cgroup_left_behind(runtime: RunscSandboxRuntime, limits: Limits) -> str:
    """A sandbox's bundle and cgroup, as a crash before `runsc create` leaves them."""
    sandbox_id = new_sandbox_id()
    runtime.write_bundle(SandboxSpec(sandbox_id=sandbox_id, limits=limits),
                         Program.script(Language.PYTHON, b"print(1)"))
    return sandbox_id


def cgroup_folders(parent: str, sandbox_id: str) -> list[Path]:
    """The sandbox's cgroup in every hierarchy (v1 has one per controller, v2 one)."""
    root = Path("/sys/fs/cgroup")
    return [path for path in (*root.glob(f"*/{parent}/{sandbox_id}"), root / parent / sandbox_id)
            if path.is_dir()]


async def reconcile(runtime: RunscSandboxRuntime) -> None:
    """What the service does at start with whatever it finds that it does not manage."""
    for sandbox_id in await runtime.leftover_ids():
        await runtime.destroy(sandbox_id)


def parent_named_in(state_dir: Path) -> str:
    return (state_dir / cgroups.PARENT_FILE).read_text().strip()


async def test_a_restarted_runtime_removes_its_leftover_cgroups(
    tmp_path: Path, settings: Settings, limits: Limits
) -> None:
    state_dir = tmp_path / "own"
    parent = ""
    try:
        async with default_parent_runtime(state_dir, settings) as first:
            parent = parent_named_in(state_dir)
            sandbox_id = a_cgroup_left_behind(first, limits)
        before = cgroup_folders(parent, sandbox_id)

        async with default_parent_runtime(state_dir, settings) as restarted:
            await reconcile(restarted)

        after = cgroup_folders(parent, sandbox_id)
    finally:
        if parent:
            cgroups.remove_parent(parent)

    assert before != []
    assert after == []


async def test_a_new_state_folder_at_the_same_path_leaves_the_old_cgroups_alone(
    tmp_path: Path, settings: Settings, limits: Limits
) -> None:
    """As a container's own state volume at the path of the host server's state folder."""
    state_dir = tmp_path / "state"
    parents = []
    try:
        async with default_parent_runtime(state_dir, settings) as host_server:
            parents.append(parent_named_in(state_dir))
            sandbox_id = a_cgroup_left_behind(host_server, limits)
        shutil.rmtree(state_dir)

        async with default_parent_runtime(state_dir, settings) as container:
            parents.append(parent_named_in(state_dir))
            await reconcile(container)

        kept = cgroup_folders(parents[0], sandbox_id)
    finally:
        for parent in parents:
            cgroups.remove_parent(parent)

    assert parents[0] != parents[1]
    assert kept != []
