"""Templates and forks on the fake runtime: a snapshot keeps a running sandbox's state (it runs
on), copies start from it under new ids, a fork makes N copies at once (all or none), and a
template cannot be deleted while a copy may still run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest
from lifecycle_support import (
    LIMITS,
    ControlledRuntime,
    NewSandboxes,
    policy,
    read_bytes,
    run_python,
    session,
    suspended_session,
    write_bytes,
)

from sandbox.adapters.fake_packages import FakePackageInstaller
from sandbox.adapters.memory_templates import InMemoryTemplateImages, InMemoryTemplateStore
from sandbox.domain.errors import (
    AtCapacity,
    CheckpointMismatch,
    InvalidRequest,
    InvalidState,
    RuntimeFailure,
    TemplateNotFound,
)
from sandbox.domain.lifecycle import copies, templates
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.execution import execute_from_template
from sandbox.domain.lifecycle.reconciliation import reconcile
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.metrics import NoMetrics
from sandbox.domain.model import Language, SandboxState
from sandbox.domain.packages import PackagePolicy
from sandbox.domain.pool_profiles import parse_pool
from sandbox.domain.templates import Templates
from sandbox.domain.warm_pool import PoolTuning, WarmPool

pytestmark = pytest.mark.anyio

KEPT = "/workspace/kept.txt"


@pytest.fixture
def template_images(tmp_path: Path) -> InMemoryTemplateImages:
    return InMemoryTemplateImages(tmp_path / "templates")


@pytest.fixture
def kept(template_images: InMemoryTemplateImages) -> Templates:
    return Templates(InMemoryTemplateStore(), template_images)


@pytest.fixture
def sandboxes(new_sandboxes: NewSandboxes, kept: Templates) -> Sandboxes:
    return new_sandboxes(templates=kept)


async def source_with_a_file(sandboxes: Sandboxes, text: bytes = b"state") -> str:
    sandbox = await session(sandboxes)
    await write_bytes(sandboxes, sandbox.sandbox_id, KEPT, text)
    return sandbox.sandbox_id


async def test_a_snapshot_keeps_the_state_and_the_sandbox_runs_on(
    sandboxes: Sandboxes, template_images: InMemoryTemplateImages
) -> None:
    source_id = await source_with_a_file(sandboxes)

    template = await templates.snapshot_sandbox(sandboxes, source_id)
    await write_bytes(sandboxes, source_id, KEPT, b"changed after")
    listed = await templates.list_templates(sandboxes)

    assert (await sandboxes.get(source_id)).state is SandboxState.RUNNING
    assert [item.template_id for item in listed] == [template.template_id]
    assert template_images.images == {template.template_id: "published"}
    assert (template.source_sandbox_id, template.language) == (source_id, Language.PYTHON)


async def test_sandboxes_started_from_a_template_each_have_its_state_under_a_new_id(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    source_id = await source_with_a_file(sandboxes)
    template = await templates.snapshot_sandbox(sandboxes, source_id)
    await write_bytes(sandboxes, source_id, KEPT, b"changed after")

    first = await copies.create_from_template(sandboxes, template.template_id)
    second = await copies.create_from_template(sandboxes, template.template_id, timeout_s=3)
    await write_bytes(sandboxes, first.sandbox_id, KEPT, b"the first's own")

    assert len({source_id, first.sandbox_id, second.sandbox_id}) == 3
    assert (first.state, first.template_id) == (SandboxState.RUNNING, template.template_id)
    assert await read_bytes(sandboxes, second.sandbox_id, KEPT) == b"state"
    assert await read_bytes(sandboxes, first.sandbox_id, KEPT) == b"the first's own"
    assert (second.limits.timeout_s, second.limits.memory_mb) == (
        3, template.limits.memory_mb)
    assert [restored for restored, _ in runtime.restores] == [first.sandbox_id,
                                                               second.sandbox_id]


async def test_only_a_running_sandbox_that_is_not_busy_can_be_snapshotted(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    suspended = await suspended_session(sandboxes)
    busy = await session(sandboxes)
    runtime.hold_execs()
    working = asyncio.create_task(run_python(sandboxes, busy.sandbox_id))
    await runtime.exec_entered.wait()

    with pytest.raises(InvalidState, match="suspended"):
        await templates.snapshot_sandbox(sandboxes, suspended.sandbox_id)
    with pytest.raises(InvalidState, match="busy"):
        await templates.snapshot_sandbox(sandboxes, busy.sandbox_id)
    runtime.release_execs()
    await working

    assert await templates.list_templates(sandboxes) == []


async def test_a_template_cannot_be_deleted_while_a_copy_of_it_may_run(
    sandboxes: Sandboxes, template_images: InMemoryTemplateImages
) -> None:
    template = await templates.snapshot_sandbox(sandboxes, await source_with_a_file(sandboxes))
    copy = await copies.create_from_template(sandboxes, template.template_id)

    with pytest.raises(InvalidState, match=copy.sandbox_id):
        await templates.delete_template(sandboxes, template.template_id)
    await delete_sandbox(sandboxes, copy.sandbox_id)
    await templates.delete_template(sandboxes, template.template_id)

    assert await templates.list_templates(sandboxes) == []
    assert template_images.images == {}
    with pytest.raises(TemplateNotFound):
        await copies.create_from_template(sandboxes, template.template_id)


@pytest.mark.parametrize("template_id", ["0123456789abcdef01234567", "../etc", ""])
async def test_an_unknown_template_is_not_found(sandboxes: Sandboxes, template_id: str) -> None:
    with pytest.raises(TemplateNotFound):
        await copies.create_from_template(sandboxes, template_id)
    with pytest.raises(TemplateNotFound):
        await templates.delete_template(sandboxes, template_id)


async def test_a_template_starts_only_in_its_own_language_and_on_its_own_runtime(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    template = await templates.snapshot_sandbox(sandboxes, await source_with_a_file(sandboxes))

    with pytest.raises(InvalidRequest, match="runs python, not bash"):
        await copies.create_from_template(sandboxes, template.template_id,
                                          language=Language.BASH)
    runtime.version = "fake-2"
    with pytest.raises(CheckpointMismatch):
        await copies.create_from_template(sandboxes, template.template_id)

    assert await sandboxes.store.list() == [await sandboxes.get(template.source_sandbox_id)]


async def test_a_fork_makes_count_sandboxes_that_go_on_from_the_present_state(
    sandboxes: Sandboxes, template_images: InMemoryTemplateImages
) -> None:
    source_id = await source_with_a_file(sandboxes, b"present")

    forks = await copies.fork_sandbox(sandboxes, source_id, 3)

    assert len({fork.sandbox_id for fork in forks} | {source_id}) == 4
    assert [fork.state for fork in forks] == [SandboxState.RUNNING] * 3
    assert [await read_bytes(sandboxes, fork.sandbox_id, KEPT) for fork in forks] == [
        b"present"] * 3
    assert (await sandboxes.get(source_id)).state is SandboxState.RUNNING
    assert template_images.images == {}  # the fork's scratch image is gone once the copies run


@pytest.mark.parametrize("count", [0, -1, 17])
async def test_a_fork_count_out_of_range_is_refused(sandboxes: Sandboxes, count: int) -> None:
    source_id = await source_with_a_file(sandboxes)

    with pytest.raises(InvalidRequest, match="count must be from 1 to 16"):
        await copies.fork_sandbox(sandboxes, source_id, count)


async def test_a_fork_over_capacity_is_refused_whole(
    new_sandboxes: NewSandboxes, kept: Templates, template_images: InMemoryTemplateImages
) -> None:
    sandboxes = new_sandboxes(policy(max_running=3), templates=kept)
    source_id = await source_with_a_file(sandboxes)

    with pytest.raises(AtCapacity):
        await copies.fork_sandbox(sandboxes, source_id, 3)

    assert [sandbox.sandbox_id for sandbox in await sandboxes.store.list()] == [source_id]
    assert template_images.images == {}


async def test_when_one_copy_of_a_fork_fails_none_is_left(
    sandboxes: Sandboxes, runtime: ControlledRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_id = await source_with_a_file(sandboxes)
    restore = runtime.restore
    calls = 0

    async def second_fails(*args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeFailure("runsc restore failed")
        await restore(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime, "restore", second_fails)

    with pytest.raises(RuntimeFailure):
        await copies.fork_sandbox(sandboxes, source_id, 3)

    assert [sandbox.sandbox_id for sandbox in await sandboxes.store.list()] == [source_id]
    assert runtime.live == {source_id}


async def test_a_script_runs_in_a_copy_of_a_template_that_is_gone_afterwards(
    sandboxes: Sandboxes, runtime: ControlledRuntime
) -> None:
    template = await templates.snapshot_sandbox(sandboxes, await source_with_a_file(sandboxes))

    result = await execute_from_template(sandboxes, template.template_id, None,
                                         b'print("from the copy")')

    assert (result.outcome.exit_code, result.to_dict()["stdout"]) == (0, "from the copy\n")
    assert result.language == "python"
    assert [copy for copy, _ in runtime.restores] == [result.sandbox_id]
    assert runtime.live == {template.source_sandbox_id}


async def test_an_image_without_a_record_is_collected_at_the_next_start(
    sandboxes: Sandboxes, template_images: InMemoryTemplateImages
) -> None:
    template = await templates.snapshot_sandbox(sandboxes, await source_with_a_file(sandboxes))
    await template_images.prepare("0123456789abcdef01234567")  # a snapshot a crash cut short

    await reconcile(sandboxes)

    assert template_images.images == {template.template_id: "published"}


async def test_a_pool_keeps_warm_copies_of_a_template_for_its_scripts_and_pins_it(
    new_sandboxes: NewSandboxes, kept: Templates, runtime: ControlledRuntime
) -> None:
    maker = new_sandboxes(templates=kept)
    template = await templates.snapshot_sandbox(maker, await source_with_a_file(maker))
    pool = WarmPool(runtime, parse_pool(f"template/{template.template_id}:1", PackagePolicy()),
                    LIMITS, (), maker.capacity, NoMetrics(), FakePackageInstaller(),
                    PoolTuning(refill_concurrency=1, backoff_s=0.05, poll_s=0.02),
                    templates=kept)
    sandboxes = new_sandboxes(templates=kept, pool=pool)
    await pool.start()
    try:
        with anyio.fail_after(5):
            while True:
                if pool.sizes().get(f"template/{template.template_id}") == 1:
                    break
                await asyncio.sleep(0.01)
        [(warm_copy, _)] = runtime.restores

        result = await execute_from_template(sandboxes, template.template_id, None,
                                             b'print("warm")')
        with pytest.raises(InvalidState, match="warm pool"):
            await templates.delete_template(sandboxes, template.template_id)
    finally:
        await pool.close()

    assert (result.sandbox_id, result.to_dict()["stdout"]) == (warm_copy, "warm\n")
