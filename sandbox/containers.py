"""The dependency-injection container: picks the adapters the settings ask for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import structlog
from dependency_injector import containers, providers

from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.adapters.fake_packages import FakePackageInstaller
from sandbox.adapters.file_output_log import FileOutputLog
from sandbox.adapters.pip_installer import PipPackageInstaller
from sandbox.adapters.prometheus_metrics import PrometheusMetrics
from sandbox.adapters.sqlite_store import SqliteSandboxStore
from sandbox.domain.capacity import Capacity
from sandbox.domain.egress import EgressPolicy
from sandbox.domain.lifecycle import LifecyclePolicy, SandboxService
from sandbox.domain.limits import LimitPolicy
from sandbox.domain.metrics import Metrics
from sandbox.domain.packages import PackagePolicy
from sandbox.domain.ports import OutputLog, PackageInstaller, SandboxRuntime, SandboxStore
from sandbox.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")


def _runsc_runtime(settings: Settings, metrics: Metrics) -> SandboxRuntime:
    # Imported when chosen, so that the fake runtime works where the runsc adapter cannot load.
    from sandbox.adapters.runsc.runtime import RunscSandboxRuntime

    return RunscSandboxRuntime(settings, metrics)


def _package_policy(settings: Settings) -> PackagePolicy:
    return settings.package_policy()


def _egress_policy(settings: Settings) -> EgressPolicy:
    return settings.egress_policy()


def _pip_installer(
    settings: Settings, store: SandboxStore, metrics: Metrics
) -> PackageInstaller:
    async def layers_in_use() -> list[str]:
        # A suspended sandbox needs its layers to restore: the cache must never evict them.
        return [layer for sandbox in await store.list() for layer in sandbox.package_dirs]

    return PipPackageInstaller(settings, in_use=layers_in_use, metrics=metrics)


async def _opened(adapter: T) -> AsyncIterator[T]:
    """Starts the chosen adapter (runtime or installer) with the app and closes it on
    shutdown; the fakes need neither."""
    start = getattr(adapter, "start", None)
    if start is not None:
        await start()
    try:
        yield adapter
    finally:
        close = getattr(adapter, "close", None)
        if close is not None:
            await close()


def _sqlite_store(settings: Settings) -> Iterator[SandboxStore]:
    store = SqliteSandboxStore(settings.state_dir / "sandboxes.db")
    try:
        yield store
    finally:
        store.close()


def _output_log(settings: Settings) -> OutputLog:
    return FileOutputLog(settings.state_dir / "outputs")


async def _served(
    runtime: SandboxRuntime,
    store: SandboxStore,
    outputs: OutputLog,
    policy: LifecyclePolicy,
    reap_interval_s: float,
    capacity: Capacity,
    metrics: Metrics,
) -> AsyncIterator[SandboxService]:
    """The lifecycle service, reconciled with the host before the first request and reaped in
    the background until shutdown."""
    service = SandboxService(runtime, store, outputs, policy, capacity=capacity, metrics=metrics)
    reconciled = await _reconciled(service)
    reaper = asyncio.create_task(_reap_forever(service, reap_interval_s, reconciled))
    try:
        yield service
    finally:
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reaper
        await service.close()


async def _reconciled(service: SandboxService) -> bool:
    # A broken runtime (runsc missing) must not stop the server from starting: /readyz says
    # what is wrong, and the reaper retries until it works.
    try:
        await service.reconcile()
    except Exception:
        log.exception("sandbox.reconcile_failed")
        return False
    return True


async def _reap_forever(service: SandboxService, interval_s: float, reconciled: bool) -> None:
    while True:
        await asyncio.sleep(interval_s)
        if not reconciled:
            reconciled = await _reconciled(service)
            continue
        try:
            await service.reap()
        except Exception:
            log.exception("sandbox.reap_round_failed")


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)

    limit_policy = providers.Singleton(
        LimitPolicy,
        defaults=settings.provided.default_limits.call(),
        max_timeout_s=settings.provided.max_timeout_s,
        max_memory_mb=settings.provided.max_memory_mb,
    )

    lifecycle_policy = providers.Singleton(
        LifecyclePolicy,
        max_running=settings.provided.max_running_sandboxes,
        retention_s=settings.provided.retention_s,
        suspended_retention_s=settings.provided.suspended_retention_s,
        max_file_bytes=settings.provided.max_file_bytes,
        suspend_on_shutdown=settings.provided.suspend_on_shutdown,
        shutdown_grace_s=settings.provided.shutdown_grace_s,
    )

    # One registry per container, so that apps built side by side (tests) never share series.
    metrics = providers.Singleton(PrometheusMetrics)

    # One admission for ephemeral executions and managed sandboxes alike: they share the
    # host's memory.
    capacity = providers.Singleton(
        Capacity,
        max_executions=settings.provided.max_concurrent_executions,
        memory_budget_mb=settings.provided.max_total_memory_mb,
        wait_s=settings.provided.capacity_wait_s,
        metrics=metrics,
    )

    # Singletons, not Resources: a Resource branch would be initialised even when not chosen.
    runtime_adapter = providers.Selector(
        settings.provided.runtime,
        fake=providers.Singleton(FakeSandboxRuntime),
        runsc=providers.Singleton(_runsc_runtime, settings, metrics),
    )

    runtime = providers.Resource(_opened, runtime_adapter)

    # Both runtimes keep records in SQLite: the fake's tests prove they survive a restart.
    store = providers.Resource(_sqlite_store, settings)

    outputs = providers.Singleton(_output_log, settings)

    # Packages install with pip on the host for the real runtime; the fake installs nothing.
    package_installer = providers.Resource(
        _opened,
        providers.Selector(
            settings.provided.runtime,
            fake=providers.Singleton(FakePackageInstaller, metrics=metrics),
            runsc=providers.Singleton(_pip_installer, settings, store, metrics),
        ),
    )

    package_policy = providers.Singleton(_package_policy, settings)

    # The operator's egress allow-list: every sandbox's list must stay within it.
    egress_policy = providers.Singleton(_egress_policy, settings)

    # Resources are started after the resources they depend on and shut down before them, so
    # the service has a started runtime and an open store for as long as it lives.
    sandbox_service = providers.Resource(
        _served,
        runtime=runtime,
        store=store,
        outputs=outputs,
        policy=lifecycle_policy,
        reap_interval_s=settings.provided.reap_interval_s,
        capacity=capacity,
        metrics=metrics,
    )
