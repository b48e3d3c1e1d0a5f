"""The limits package builds run under: a bounded queue, memory in the shared capacity, the
layer size watched while pip runs, pip's memory and time; with the stand-in pip of
pip_support."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pip_support import (
    EMPTY_CACHE,
    cache_entries,
    make_installer,
    make_settings,
    pip_runs,
    process_ended,
    reqs,
    write_fake_pip,
)

from sandbox.adapters.pip_installer import MAX_PARALLEL_BUILDS, PipPackageInstaller
from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import AtCapacity, PackageResolutionFailed
from sandbox.domain.metrics import CapacityLimit, NoMetrics

pytestmark = pytest.mark.anyio

# Only a guard against a hang: each test that meets it ends in its first second.
GENEROUS_PIP_TIMEOUT_S = 60.0


@pytest.fixture
def fake_pip(tmp_path: Path) -> Path:
    return write_fake_pip(tmp_path)


class CountingMetrics(NoMetrics):
    def __init__(self) -> None:
        self.rejected: list[CapacityLimit] = []

    def capacity_rejected(self, limit: CapacityLimit) -> None:
        self.rejected.append(limit)


@pytest.fixture
async def closing() -> AsyncIterator[list[PipPackageInstaller]]:
    """Installers closed at the end of the test: their builds cancelled, their pips killed."""
    installers: list[PipPackageInstaller] = []
    yield installers
    for installer in installers:
        await installer.close()


async def running_builds(fake_pip: Path, count: int) -> None:
    """Until `count` stand-in pips have started."""
    async with asyncio.timeout(GENEROUS_PIP_TIMEOUT_S):
        while True:
            if len(pip_runs(fake_pip)) >= count:
                return
            await asyncio.sleep(0.01)


async def test_builds_beyond_the_running_and_waiting_ones_are_refused_at_once(
    tmp_path: Path, fake_pip: Path, closing: list[PipPackageInstaller]
) -> None:
    metrics = CountingMetrics()
    capacity = Capacity(max_executions=8, memory_budget_mb=4096, wait_s=1.0, metrics=metrics)
    settings = make_settings(tmp_path, max_queued_builds=1, pip_memory_mb=16)
    installer = make_installer(settings, fake_pip, capacity=capacity)
    closing.append(installer)
    builds = [asyncio.create_task(installer.layer_for(reqs(f"slow-{index}")))
              for index in range(MAX_PARALLEL_BUILDS + 1)]
    await running_builds(fake_pip, MAX_PARALLEL_BUILDS)

    with pytest.raises(AtCapacity) as refused:
        await installer.layer_for(reqs("another"))
    joined = asyncio.create_task(installer.layer_for(reqs("slow-0")))
    await asyncio.sleep(0.05)

    assert refused.value.retry_after_s == 10
    assert "3 package builds are running or waiting" in refused.value.message
    assert metrics.rejected == ["package_builds"]
    assert not joined.done()  # a set already being built is waited for, not refused
    assert len(pip_runs(fake_pip)) == MAX_PARALLEL_BUILDS
    for task in [*builds, joined]:
        task.cancel()


async def test_a_running_build_holds_pips_memory_in_the_shared_budget(
    tmp_path: Path, fake_pip: Path, closing: list[PipPackageInstaller]
) -> None:
    capacity = Capacity(max_executions=8, memory_budget_mb=4096, wait_s=1.0)
    installer = make_installer(make_settings(tmp_path, pip_memory_mb=300), fake_pip,
                               capacity=capacity)
    closing.append(installer)
    build = asyncio.create_task(installer.layer_for(reqs("slow")))
    await running_builds(fake_pip, 1)

    held = capacity.memory_mb
    build.cancel()
    await installer.close()

    assert held == 300
    assert capacity.memory_mb == 0


async def test_a_build_that_finds_no_memory_is_refused_and_runs_no_pip(
    tmp_path: Path, fake_pip: Path
) -> None:
    capacity = Capacity(max_executions=8, memory_budget_mb=1024, wait_s=0.05)
    await capacity.reserve("a-sandbox", 900)
    installer = make_installer(make_settings(tmp_path, pip_memory_mb=512), fake_pip,
                               capacity=capacity)

    with pytest.raises(AtCapacity, match="hold 900 of the 1024 MiB"):
        await installer.layer_for(reqs("alpha"))

    assert pip_runs(fake_pip) == []
    capacity.release("a-sandbox")
    assert await installer.layer_for(reqs("alpha"))
    assert capacity.memory_mb == 0


async def test_pip_is_stopped_as_soon_as_the_build_passes_the_layer_limit(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = make_settings(tmp_path, max_layer_mb=2, pip_timeout_s=GENEROUS_PIP_TIMEOUT_S)
    installer = make_installer(settings, fake_pip)

    with pytest.raises(PackageResolutionFailed) as failure:
        await installer.layer_for(reqs("bomb"))

    assert failure.value.message == ("the packages take more than the limit of 2 MB for a "
                                     "package layer (pip was stopped)")
    (install,) = pip_runs(fake_pip, "install")
    assert process_ended(int(install.split()[0]))
    assert cache_entries(settings) == EMPTY_CACHE


async def test_a_single_file_larger_than_the_layer_limit_stops_pip_at_the_limit(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = make_settings(tmp_path, max_layer_mb=2, pip_timeout_s=GENEROUS_PIP_TIMEOUT_S)

    with pytest.raises(PackageResolutionFailed) as failure:
        await make_installer(settings, fake_pip).layer_for(reqs("bigfile"))

    assert failure.value.message == ("a single file takes more than the limit of 2 MB for a "
                                     "package layer (pip was stopped)")
    assert cache_entries(settings) == EMPTY_CACHE


async def test_a_layer_found_too_large_when_pip_ends_is_refused_and_removed(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = make_settings(tmp_path, max_layer_mb=1)
    installer = make_installer(settings, fake_pip)

    with pytest.raises(PackageResolutionFailed, match="more than the limit of 1 MB"):
        await installer.layer_for(reqs("huge==1500"))

    assert cache_entries(settings) == EMPTY_CACHE


async def test_pip_is_held_to_the_memory_its_build_reserved(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = make_settings(tmp_path, pip_memory_mb=64)

    with pytest.raises(PackageResolutionFailed, match="MemoryError"):
        await make_installer(settings, fake_pip).layer_for(reqs("memhog"))


async def test_pip_is_killed_when_the_build_takes_too_long(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = make_settings(tmp_path, pip_timeout_s=0.5)
    installer = make_installer(settings, fake_pip)

    with pytest.raises(PackageResolutionFailed, match="timed out after 0.5 s"):
        await installer.layer_for(reqs("slow"))

    assert process_ended(int(pip_runs(fake_pip)[0].split()[0]))
    assert cache_entries(settings) == EMPTY_CACHE
