"""Creating detached scripts and sessions, and the packages they ask for."""

from __future__ import annotations

import asyncio

import pytest
from lifecycle_support import LIMITS, ControlledRuntime, NewSandboxes, settled

from sandbox.adapters.fake_packages import FakePackageInstaller
from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import InvalidRequest, PackageResolutionFailed, RuntimeFailure
from sandbox.domain.lifecycle.creation import create_session, run_detached
from sandbox.domain.lifecycle.reading import list_sandboxes
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import IDLE, Language, SandboxKind, SandboxState
from sandbox.domain.reasons import ReasonCode

pytestmark = pytest.mark.anyio


async def test_a_detached_script_runs_on_and_its_record_says_how_it_ended(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    source = b'print("hi")\nsys.exit(3)\n'

    started = await run_detached(sandboxes, Language.PYTHON, source, LIMITS)

    ended = await settled(sandboxes, started.sandbox_id)

    assert (started.kind, started.state) == (SandboxKind.SCRIPT, SandboxState.RUNNING)
    assert (ended.state, ended.exit_code, ended.reason_code, ended.reason) == (
        SandboxState.EXITED, 3, ReasonCode.EXITED, "exited with code 3"
    )
    assert runtime.live == set()


async def test_a_session_runs_idle_with_its_env_and_idle_timeout(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    sandbox = await create_session(sandboxes, Language.BASH, LIMITS, env=(("A", "1"),),
                                   idle_timeout_s=60)

    [(spec, program)] = runtime.launched
    assert (sandbox.kind, sandbox.state) == (SandboxKind.SESSION, SandboxState.RUNNING)
    assert (sandbox.env, sandbox.idle_timeout_s) == ((("A", "1"),), 60)
    assert (spec.env, program) == ((("A", "1"),), IDLE)
    assert await sandboxes.get(sandbox.sandbox_id) == sandbox


async def test_a_session_gets_its_packages_installed_and_mounted_before_it_starts(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime
) -> None:
    sandboxes = new_sandboxes(installer=FakePackageInstaller())

    sandbox = await create_session(sandboxes, Language.PYTHON, LIMITS, packages=["attrs"])

    [(spec, _)] = runtime.launched
    assert len(sandbox.package_dirs) == 1
    assert spec.package_dirs == sandbox.package_dirs


async def test_packages_for_a_bash_session_are_refused_and_nothing_is_created(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime
) -> None:
    sandboxes = new_sandboxes(installer=FakePackageInstaller())

    with pytest.raises(InvalidRequest, match="only be installed for Python"):
        await create_session(sandboxes, Language.BASH, LIMITS, packages=["attrs"])

    assert (await list_sandboxes(sandboxes), runtime.launched) == ([], [])


async def test_a_detached_script_whose_packages_cannot_be_installed_costs_no_sandbox(
    new_sandboxes: NewSandboxes, runtime: ControlledRuntime
) -> None:
    capacity = Capacity(max_executions=4, memory_budget_mb=10_000, wait_s=0.05)
    sandboxes = new_sandboxes(installer=FakePackageInstaller(unavailable=["nowhere"]),
                              capacity=capacity)
    source = b'# /// script\n# dependencies = ["nowhere"]\n# ///\nprint("hi")\n'

    with pytest.raises(PackageResolutionFailed):
        await run_detached(sandboxes, Language.PYTHON, source, LIMITS)

    assert (await list_sandboxes(sandboxes), runtime.launched) == ([], [])
    assert capacity.memory_mb == 0


async def test_a_launch_the_runtime_fails_leaves_a_failed_record(
    sandboxes: Sandboxes, runtime: ControlledRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeFailure("runsc run failed: the rootfs is gone")

    monkeypatch.setattr(runtime, "launch", broken)

    with pytest.raises(RuntimeFailure):
        await create_session(sandboxes, Language.PYTHON, LIMITS)

    [failed] = await list_sandboxes(sandboxes)
    assert failed.state is SandboxState.FAILED


async def test_a_create_cancelled_half_way_leaves_a_failed_record_not_a_creating_one(
    sandboxes: Sandboxes, runtime: ControlledRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    launching = asyncio.Event()

    async def slow(*args: object) -> None:
        launching.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(runtime, "launch", slow)
    creating = asyncio.create_task(create_session(sandboxes, Language.PYTHON, LIMITS))
    await launching.wait()

    creating.cancel()
    await asyncio.gather(creating, return_exceptions=True)

    [failed] = await list_sandboxes(sandboxes)
    assert (failed.state, failed.reason_code) == (SandboxState.FAILED,
                                                  ReasonCode.CREATE_INTERRUPTED)
