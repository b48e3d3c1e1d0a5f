from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from dependency_injector import providers
from lifecycle_support import limits

from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.adapters.memory_signals import InMemorySignals
from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.adapters.postgres.handoffs import PostgresHandoffRequests
from sandbox.adapters.postgres.leases import PostgresLeaseStore
from sandbox.adapters.postgres.output_log import PostgresOutputLog
from sandbox.adapters.postgres.signals import PostgresSignals
from sandbox.adapters.postgres.store import PostgresSandboxStore
from sandbox.adapters.sqlite_leases import SqliteLeaseStore
from sandbox.containers import Container
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle import reaping
from sandbox.domain.lifecycle.creation import create_session
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Language, SandboxSpec, SandboxState
from sandbox.settings import Settings

pytestmark = pytest.mark.anyio


class RuntimeWithLifecycle(FakeSandboxRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def close(self) -> None:
        self.calls.append("close")


async def awaited(pending: Awaitable[Any] | None) -> None:
    # An awaitable only when some resource is asynchronous, as the runtime's is.
    assert pending is not None
    await pending


def test_the_fake_runtime_is_chosen_by_the_runtime_setting(tmp_path: Path) -> None:
    container = Container(settings=Settings(runtime="fake", state_dir=tmp_path))

    assert isinstance(container.runtime_adapter(), FakeSandboxRuntime)


def test_the_limit_policy_follows_the_settings(tmp_path: Path) -> None:
    settings = Settings(runtime="fake", state_dir=tmp_path, max_timeout_s=60, max_memory_mb=1024)

    policy = Container(settings=settings).limit_policy()

    assert policy.defaults == settings.default_limits()
    assert (policy.max_timeout_s, policy.max_memory_mb) == (60, 1024)


async def test_the_runtime_is_started_with_the_resources_and_closed_with_them(
    tmp_path: Path,
) -> None:
    container = Container(settings=Settings(runtime="fake", state_dir=tmp_path))
    runtime = RuntimeWithLifecycle()
    container.runtime_adapter.override(providers.Object(runtime))

    await awaited(container.init_resources())
    started = list(runtime.calls)
    await awaited(container.shutdown_resources())

    assert started == ["start"]
    assert runtime.calls == ["start", "close"]


class RuntimeThatFailsToList(FakeSandboxRuntime):
    """runsc missing at start-up: listing its sandboxes fails a given number of times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.listings = 0

    async def running_ids(self) -> set[str]:
        self.listings += 1
        if self.listings <= self.failures:
            raise RuntimeFailure("runsc: not found")
        return await super().running_ids()


async def test_the_sandboxes_keep_their_records_in_sqlite_under_the_state_dir(
    tmp_path: Path,
) -> None:
    container = Container(settings=Settings(runtime="fake", state_dir=tmp_path))

    await awaited(container.init_resources())
    pending: Any = container.sandboxes()  # an async resource answers a future
    sandboxes: Sandboxes = await pending
    await create_session(sandboxes, Language.PYTHON, limits())
    await awaited(container.shutdown_resources())

    assert (tmp_path / "sandboxes.db").exists()
    assert (tmp_path / "outputs").is_dir()


async def test_a_failed_reconcile_does_not_stop_the_start_and_is_retried(
    tmp_path: Path,
) -> None:
    settings = Settings(runtime="fake", state_dir=tmp_path, reap_interval_s=0.01)
    container = Container(settings=settings)
    runtime = RuntimeThatFailsToList(failures=2)
    container.runtime_adapter.override(providers.Object(runtime))

    await awaited(container.init_resources())
    for _ in range(100):
        if runtime.listings >= 3:
            break
        await asyncio.sleep(0.01)
    await awaited(container.shutdown_resources())

    assert runtime.listings == 3  # once at start, then every round until one succeeded


async def test_the_reaper_goes_on_after_a_round_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(runtime="fake", state_dir=tmp_path, reap_interval_s=0.01)
    rounds: list[int] = []

    async def failing_reap(sandboxes: Sandboxes) -> None:
        rounds.append(1)
        raise RuntimeError("the store is locked")

    monkeypatch.setattr(reaping, "reap", failing_reap)
    container = Container(settings=settings)

    await awaited(container.init_resources())
    for _ in range(100):
        if len(rounds) >= 3:
            break
        await asyncio.sleep(0.01)
    await awaited(container.shutdown_resources())
    after_shutdown = len(rounds)
    await asyncio.sleep(0.05)

    assert after_shutdown >= 3
    assert len(rounds) == after_shutdown  # the reaper ended with the app


def test_the_capacity_follows_the_settings(tmp_path: Path) -> None:
    settings = Settings(runtime="fake", state_dir=tmp_path, max_concurrent_executions=3,
                        max_concurrent_calls=5, max_total_memory_mb=2048)

    capacity = Container(settings=settings).capacity()

    assert (capacity.max_executions, capacity.max_calls, capacity.memory_budget_mb) == (3, 5, 2048)
async def test_without_a_database_url_shared_state_is_sqlite_and_signals_stay_in_process(
    tmp_path: Path,
) -> None:
    container = Container(settings=Settings(runtime="fake", state_dir=tmp_path))

    await awaited(container.init_resources())
    pending: Any = container.leases()
    leases = await pending
    lease = await leases.acquire("0123456789abcdef01234567", "a", 60)
    signals = container.signals()
    await awaited(container.shutdown_resources())

    assert isinstance(leases, SqliteLeaseStore)
    assert lease is not None
    assert isinstance(signals, InMemorySignals)


@pytest.mark.postgres
async def test_a_database_url_puts_records_leases_and_output_in_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    settings = Settings(runtime="fake", state_dir=tmp_path, database_url=postgres_url)
    container = Container(settings=settings)

    await awaited(container.init_resources())
    pending: Any = container.sandboxes()
    sandboxes: Sandboxes = await pending
    sandbox = await create_session(sandboxes, Language.PYTHON, settings.default_limits())
    adapters = [await resolved(provider) for provider in (
        container.store, container.leases, container.handoffs, container.outputs,
        container.signals)]
    await awaited(container.shutdown_resources())

    assert [type(adapter) for adapter in adapters] == [
        PostgresSandboxStore, PostgresLeaseStore, PostgresHandoffRequests, PostgresOutputLog,
        PostgresSignals]
    assert not (tmp_path / "sandboxes.db").exists()
    other = PostgresDatabase(postgres_url)
    await other.start()
    try:
        kept = await PostgresSandboxStore(other).get(sandbox.sandbox_id)
    finally:
        await other.close()
    assert kept is not None
    assert kept.state is SandboxState.SUSPENDED  # by the service's close, before the pool's


async def resolved(provider: Any) -> Any:
    value = provider()
    return await value if inspect.isawaitable(value) else value
class RuntimeThatCountsListings(RuntimeThatFailsToList):
    """Notes how many listings (reconcile attempts) each warm start came after."""

    def __init__(self, failures: int) -> None:
        super().__init__(failures)
        self.listings_at_warm_starts: list[int] = []

    async def start_warm(
        self, spec: SandboxSpec, language: Language, preimport: tuple[str, ...]
    ) -> None:
        self.listings_at_warm_starts.append(self.listings)
        await super().start_warm(spec, language, preimport)


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in time")


async def test_the_warm_pool_fills_once_a_reconcile_succeeded_and_empties_at_shutdown(
    tmp_path: Path,
) -> None:
    settings = Settings(runtime="fake", state_dir=tmp_path, reap_interval_s=0.01,
                        pool="python:2,bash:1")
    container = Container(settings=settings)
    runtime = RuntimeThatCountsListings(failures=2)
    container.runtime_adapter.override(providers.Object(runtime))

    await awaited(container.init_resources())
    await until(lambda: len(runtime.warm) == 3)
    await awaited(container.shutdown_resources())

    assert runtime.listings_at_warm_starts == [3, 3, 3]  # none before the reconcile worked
    assert runtime.live == set()


async def test_pooled_sandboxes_a_crash_left_behind_are_removed_at_the_next_start(
    tmp_path: Path,
) -> None:
    runtime = FakeSandboxRuntime()
    left = [SandboxSpec(sandbox_id=new_sandbox_id(), limits=limits()) for _ in range(2)]
    for spec in left:  # what a server that was killed had in its pool
        await runtime.start_warm(spec, Language.PYTHON, ())
    container = Container(settings=Settings(runtime="fake", state_dir=tmp_path, pool="bash:1"))
    container.runtime_adapter.override(providers.Object(runtime))

    await awaited(container.init_resources())
    await until(lambda: len(runtime.warm) == 1)
    after_start = dict(runtime.warm)
    await awaited(container.shutdown_resources())

    assert list(after_start.values()) == [Language.BASH]
    assert not {spec.sandbox_id for spec in left} & set(after_start)
    assert runtime.live == set()
