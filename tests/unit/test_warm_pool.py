"""The warm pool's policy, on the fake runtime: hits, misses, refill, capacity, failures and
shutdown."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
import pytest
from lifecycle_support import limits

from sandbox.adapters.fake import FakeBehaviour, FakeSandboxRuntime
from sandbox.adapters.fake_packages import FakePackageInstaller
from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import AtCapacity
from sandbox.domain.lifecycle.execution import run_script
from sandbox.domain.metrics import NoMetrics, PoolMiss
from sandbox.domain.model import Language, Limits, SandboxSpec
from sandbox.domain.packages import PackagePolicy, package_layers
from sandbox.domain.pool_profiles import parse_pool
from sandbox.domain.warm_pool import PoolTuning, WarmPool

pytestmark = pytest.mark.anyio

LIMITS = limits(timeout_s=5, memory_mb=512)
PY, SH = Language.PYTHON, Language.BASH
HELLO = b'print("hello")\n'
FAST = PoolTuning(refill_concurrency=1, backoff_s=0.05, max_backoff_s=0.2, poll_s=0.02)


@dataclass
class RecordingMetrics(NoMetrics):
    hits: list[str] = field(default_factory=list)
    misses: list[PoolMiss] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    refills: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def pool_hit(self, profile: str) -> None:
        self.hits.append(profile)

    def pool_missed(self, reason: PoolMiss) -> None:
        self.misses.append(reason)

    def pool_size(self, profile: str, ready: int) -> None:
        self.sizes[profile] = ready

    def pool_refilled(self, profile: str, seconds: float) -> None:
        self.refills.append(profile)

    def pool_refill_failed(self, profile: str) -> None:
        self.failures.append(profile)


class TimedRuntime(FakeSandboxRuntime):
    """The fake, noting when each warm start began."""

    def __init__(self) -> None:
        super().__init__()
        self.started_at: list[float] = []

    async def start_warm(
        self, spec: SandboxSpec, language: Language, preimport: tuple[str, ...]
    ) -> None:
        self.started_at.append(time.monotonic())
        await super().start_warm(spec, language, preimport)


@dataclass
class Pools:
    runtime: TimedRuntime
    capacity: Capacity
    metrics: RecordingMetrics
    installer: FakePackageInstaller
    made: list[WarmPool] = field(default_factory=list)

    def make(self, setting: str = "python:2,bash:1", tuning: PoolTuning = FAST,
             pinned: set[str] | None = None) -> WarmPool:
        pool = WarmPool(self.runtime, parse_pool(setting, PackagePolicy()), LIMITS,
                        ("numpy",), self.capacity, self.metrics, self.installer, tuning,
                        pinned_layers=pinned)
        self.made.append(pool)
        return pool

    async def started(self, setting: str = "python:2,bash:1", full: bool = True,
                      tuning: PoolTuning = FAST) -> WarmPool:
        pool = self.make(setting, tuning)
        await pool.start()
        if full:
            await until(lambda: sum(pool.sizes().values()) == total(setting))
        return pool


def total(setting: str) -> int:
    return sum(profile.size for profile in parse_pool(setting, PackagePolicy()))


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    with anyio.fail_after(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.005)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def pools() -> AsyncIterator[Pools]:
    """Pools on one fake runtime and capacity; closed afterwards, leaving nothing."""
    made = Pools(TimedRuntime(), Capacity(8, 4096, 0.5), RecordingMetrics(),
                 FakePackageInstaller())
    yield made
    for pool in made.made:
        await pool.close()
    assert made.runtime.live == set()
    assert made.capacity.memory_mb == 0


async def run(pools: Pools, pool: WarmPool, language: Language = PY, source: bytes = HELLO,
              limits: Limits = LIMITS, package_dirs: tuple[str, ...] = ()) -> str:
    result = await run_script(pools.runtime, language, source, limits, None, package_dirs,
                                  capacity=pools.capacity, metrics=pools.metrics, pool=pool)
    assert result.outcome.exit_code == 0, result.stderr.text
    return result.sandbox_id


# Filling ------------------------------------------------------------------------------------


async def test_the_pool_fills_each_profile_to_its_size(pools: Pools) -> None:
    pool = await pools.started("python:2,bash:1")

    assert pool.sizes() == {"python": 2, "bash": 1}
    assert sorted(pools.runtime.warm.values()) == [SH, PY, PY]
    assert pools.metrics.sizes == {"python": 2, "bash": 1}
    assert sorted(pools.metrics.refills) == ["bash", "python", "python"]


async def test_a_pooled_python_sandbox_has_the_modules_imported_and_the_profile_limits(
    pools: Pools,
) -> None:
    await pools.started("python@1024:1")

    (spec,) = pools.runtime.warm_starts
    assert spec.limits == limits(timeout_s=5, memory_mb=1024)
    assert spec.package_dirs == ()


async def test_the_refill_starts_at_most_so_many_sandboxes_at_once(pools: Pools) -> None:
    pools.runtime.warm_gate.clear()
    pool = pools.make("python:4", PoolTuning(refill_concurrency=2, poll_s=0.02))
    await pool.start()

    await until(lambda: len(pools.runtime.warm_starts) == 2)
    await asyncio.sleep(0.1)
    held = len(pools.runtime.warm_starts)
    pools.runtime.warm_gate.set()
    await until(lambda: pool.sizes() == {"python": 4})

    assert held == 2


async def test_a_failing_start_is_retried_after_a_backoff_that_doubles(pools: Pools) -> None:
    pools.runtime.failing_warm_starts = 3

    pool = await pools.started("python:1")

    starts = pools.runtime.started_at
    waits = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert pool.sizes() == {"python": 1}
    assert pools.metrics.failures == ["python"] * 3
    assert len(starts) == 4
    assert [wait >= expected for wait, expected in zip(waits, (0.05, 0.1, 0.2), strict=True)] \
        == [True, True, True]


async def test_the_backoff_of_one_profile_does_not_hold_up_another(pools: Pools) -> None:
    pools.runtime.failing_warm_starts = 1
    pool = pools.make("python:1,bash:1", PoolTuning(backoff_s=60, poll_s=0.02))
    await pool.start()

    await until(lambda: pool.sizes() == {"python": 0, "bash": 1}
                or pool.sizes() == {"python": 1, "bash": 0})

    assert len(pools.metrics.failures) == 1


# Requests -----------------------------------------------------------------------------------


async def test_a_request_that_fits_runs_in_a_pooled_sandbox_which_is_then_replaced(
    pools: Pools,
) -> None:
    pool = await pools.started("python:1")
    (pooled,) = pools.runtime.warm

    sandbox_id = await run(pools, pool)

    assert sandbox_id == pooled
    assert [program.source for _, program in pools.runtime.warm_runs] == [HELLO]
    assert pools.runtime.runs == []
    assert pools.metrics.hits == ["python"]
    await until(lambda: pool.sizes() == {"python": 1} and pooled not in pools.runtime.live)
    assert pools.runtime.live == set(pools.runtime.warm) != {pooled}


async def test_each_pooled_sandbox_serves_one_request(pools: Pools) -> None:
    pool = await pools.started("bash:2")

    first = await run(pools, pool, SH, b"echo one\n")
    second = await run(pools, pool, SH, b"echo two\n")

    assert first != second
    assert [sandbox_id for sandbox_id, _ in pools.runtime.warm_runs] == [first, second]


async def test_the_requests_own_timeout_applies_in_a_pooled_sandbox(pools: Pools) -> None:
    pool = await pools.started("python:1")
    pools.runtime.program(b"slow", FakeBehaviour(sleep_s=10))

    result = await run_script(pools.runtime, PY, b"slow", limits(timeout_s=0.1),
                                  capacity=pools.capacity, pool=pool)

    assert result.outcome.timed_out is True
    assert pools.metrics.hits == ["python"]


@pytest.mark.parametrize(
    ("language", "limits", "packages"),
    [
        (SH, LIMITS, ()),
        (PY, limits(timeout_s=5, memory_mb=256), ()),
        (PY, limits(timeout_s=5, memory_mb=512, cpus=2), ()),
        (PY, LIMITS, ("/some/layer",)),
    ],
    ids=["language", "memory", "other limits", "packages"],
)
async def test_a_request_that_fits_no_profile_runs_cold(
    pools: Pools, language: Language, limits: Limits, packages: tuple[str, ...],
) -> None:
    pool = await pools.started("python:1")
    source = HELLO if language is PY else b"echo hello\n"

    await run(pools, pool, language, source, limits, packages)

    assert len(pools.runtime.runs) == 1
    assert pools.runtime.warm_runs == []
    assert pools.metrics.misses == ["no_profile"]
    assert pool.sizes() == {"python": 1}


async def test_a_request_that_finds_its_profile_empty_runs_cold(pools: Pools) -> None:
    pools.runtime.warm_gate.clear()
    pool = await pools.started("python:1", full=False)

    await run(pools, pool)

    assert len(pools.runtime.runs) == 1
    assert pools.metrics.misses == ["empty"]


async def test_a_pool_not_started_or_without_profiles_sends_requests_cold(
    pools: Pools,
) -> None:
    await run(pools, pools.make("python:1"))
    await run(pools, pools.make(""))

    assert pools.metrics.misses == ["stopped", "disabled"]
    assert len(pools.runtime.runs) == 2


async def test_a_profile_with_packages_serves_requests_for_the_same_packages(
    pools: Pools,
) -> None:
    pinned: set[str] = set()
    pool = pools.make("python[Tablib>=3,six]:1", pinned=pinned)
    await pool.start()
    await until(lambda: pool.sizes() == {"python[six,tablib>=3]": 1})
    layers = await package_layers(pools.installer, PY, HELLO, ["six", "tablib>=3"],
                                  PackagePolicy())

    await run(pools, pool, package_dirs=layers)

    assert pools.runtime.warm_starts[0].package_dirs == layers
    assert pools.metrics.hits == ["python[six,tablib>=3]"]
    assert pinned == set(layers)


# Memory -------------------------------------------------------------------------------------


async def test_pooled_sandboxes_hold_their_memory_in_the_shared_budget(pools: Pools) -> None:
    await pools.started("python:2,bash@256:1")

    assert pools.capacity.memory_mb == 2 * 512 + 256


async def test_the_pool_fills_only_with_memory_that_is_free(pools: Pools) -> None:
    pools.capacity = Capacity(8, 1024, 0.5)
    pool = await pools.started("python:3", full=False)

    await until(lambda: pool.sizes() == {"python": 2})
    await asyncio.sleep(0.1)

    assert pool.sizes() == {"python": 2}
    assert len(pools.runtime.warm_starts) == 2


async def test_a_request_short_of_memory_makes_the_pool_give_back_idle_sandboxes(
    pools: Pools,
) -> None:
    pools.capacity = Capacity(8, 1024, 5)
    pool = await pools.started("python:2")
    pooled = set(pools.runtime.warm)
    pools.runtime.program(b"big", FakeBehaviour(sleep_s=0.3))

    result = await run_script(pools.runtime, PY, b"big", limits(timeout_s=5, memory_mb=1024),
                                  capacity=pools.capacity, pool=pool)

    assert result.outcome.exit_code == 0
    assert pooled.isdisjoint(pools.runtime.live)
    assert len(pools.runtime.runs) == 1
    await until(lambda: pool.sizes() == {"python": 2})  # refilled once the request ended


async def test_a_start_in_flight_is_abandoned_for_a_request_short_of_memory(
    pools: Pools,
) -> None:
    pools.capacity = Capacity(8, 1024, 5)
    pools.runtime.warm_gate.clear()
    pool = await pools.started("python:1", full=False)
    await until(lambda: pools.capacity.memory_mb == 512)

    result = await run_script(pools.runtime, PY, HELLO, limits(timeout_s=5, memory_mb=1024),
                                  capacity=pools.capacity, pool=pool)

    assert result.outcome.exit_code == 0
    assert pool.sizes() == {"python": 0}


async def test_a_request_refused_for_capacity_gives_its_pooled_sandbox_back(
    pools: Pools,
) -> None:
    pools.capacity = Capacity(1, 4096, 0.05)
    pool = await pools.started("python:1,bash:1")
    pools.runtime.program(b"hold", FakeBehaviour(sleep_s=5))
    holding = asyncio.create_task(run_script(pools.runtime, SH, b"hold", LIMITS,
                                                 capacity=pools.capacity, pool=pool))
    await until(lambda: pools.capacity.executions == 1)
    (waiting,) = [key for key, language in pools.runtime.warm.items() if language is PY]

    with pytest.raises(AtCapacity):
        await run_script(pools.runtime, PY, HELLO, LIMITS, capacity=pools.capacity,
                             pool=pool)

    assert pool.sizes()["python"] == 1
    assert waiting in pools.runtime.warm
    holding.cancel()
    await asyncio.gather(holding, return_exceptions=True)


# Shutting down ------------------------------------------------------------------------------


async def test_close_destroys_every_pooled_sandbox_and_abandons_starts(pools: Pools) -> None:
    pool = await pools.started("python:2")
    pools.runtime.warm_gate.clear()
    await run(pools, pool)  # its replacement is held in its start
    await until(lambda: len(pools.runtime.warm_starts) == 3)

    await pool.close()

    assert pools.runtime.live == set()
    assert pools.capacity.memory_mb == 0
    assert pool.sizes() == {"python": 0}


async def test_a_pooled_sandbox_in_use_at_close_is_destroyed_too(pools: Pools) -> None:
    pool = await pools.started("python:1")
    pools.runtime.warm_gate.clear()
    pools.runtime.program(b"slow", FakeBehaviour(sleep_s=0.2))
    running = asyncio.create_task(run_script(pools.runtime, PY, b"slow", LIMITS,
                                                 capacity=pools.capacity, pool=pool))
    await until(lambda: len(pools.runtime.warm_runs) == 1)

    await pool.close()

    assert pools.runtime.live == set()
    await asyncio.gather(running, return_exceptions=True)
    assert pools.capacity.memory_mb == 0


async def test_a_closed_pool_sends_requests_cold(pools: Pools) -> None:
    pool = await pools.started("python:1")
    await pool.close()

    await run(pools, pool)

    assert pools.metrics.misses == ["stopped"]
