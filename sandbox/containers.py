"""The dependency-injection container: picks the adapters the settings ask for."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator
from functools import partial
from typing import TypeVar

import structlog
from dependency_injector import containers, providers

from sandbox.adapters import embedded
from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.adapters.fake_packages import FakePackageInstaller
from sandbox.adapters.file_output_log import FileOutputLog
from sandbox.adapters.folder_template_images import FolderTemplateImages
from sandbox.adapters.memory_signals import InMemorySignals
from sandbox.adapters.pip_installer import PipPackageInstaller
from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.adapters.postgres.handoffs import PostgresHandoffRequests
from sandbox.adapters.postgres.leases import PostgresLeaseStore
from sandbox.adapters.postgres.output_log import PostgresOutputLog
from sandbox.adapters.postgres.signals import PostgresSignals
from sandbox.adapters.postgres.store import PostgresSandboxStore
from sandbox.adapters.postgres.templates import PostgresTemplateStore
from sandbox.adapters.prometheus_metrics import PrometheusMetrics
from sandbox.adapters.sqlite_db import SqliteDatabase
from sandbox.adapters.sqlite_handoffs import SqliteHandoffRequests
from sandbox.adapters.sqlite_leases import SqliteLeaseStore
from sandbox.adapters.sqlite_store import SqliteSandboxStore
from sandbox.adapters.sqlite_templates import SqliteTemplateStore
from sandbox.domain.capacity import Capacity
from sandbox.domain.egress import EgressPolicy
from sandbox.domain.image_store import ImageStore
from sandbox.domain.lifecycle import handoff, leases, reaping, reconciliation, shutdown
from sandbox.domain.lifecycle.sandboxes import LifecyclePolicy, Sandboxes, SharedState
from sandbox.domain.limits import LimitPolicy
from sandbox.domain.metrics import Metrics
from sandbox.domain.model import SandboxState
from sandbox.domain.packages import PackagePolicy
from sandbox.domain.ports import (
    OutputLog,
    PackageInstaller,
    SandboxRuntime,
    SandboxStore,
    TemplateImages,
    TemplateStore,
)
from sandbox.domain.templates import Templates
from sandbox.domain.warm_pool import PoolTuning, WarmPool
from sandbox.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")


def _runsc_runtime(settings: Settings, metrics: Metrics) -> SandboxRuntime:
    # Imported when chosen, so that the fake runtime works where the runsc adapter cannot load.
    from sandbox.adapters.runsc.runtime import RunscSandboxRuntime

    return RunscSandboxRuntime(settings, metrics)


def _fake_runtime(settings: Settings) -> SandboxRuntime:
    return FakeSandboxRuntime(image_dir=settings.state_dir / "images")


def _image_store(settings: Settings) -> ImageStore:
    """Checkpoint images in SANDBOX_CHECKPOINT_DIR (shared by every instance when it is a
    mounted bucket), fetched into a folder of this instance's own before a restore."""
    return embedded.image_store(settings)


def _owner_id(settings: Settings) -> str:
    return settings.owner_id()


def _package_policy(settings: Settings) -> PackagePolicy:
    return settings.package_policy()


# The sandboxes that may still mount their layers: a suspended one needs them to restore.
# Exited and failed records only wait to be deleted: they hold no layer from eviction.
LAYER_HOLDING_STATES = frozenset(
    {SandboxState.CREATING, SandboxState.RUNNING, SandboxState.SUSPENDED}
)


def _egress_policy(settings: Settings) -> EgressPolicy:
    return settings.egress_policy()


def _lifecycle_policy(settings: Settings) -> LifecyclePolicy:
    return settings.lifecycle_policy()


async def layers_held(
    store: SandboxStore, pinned: set[str] | None = None,
    templates: TemplateStore | None = None,
) -> list[str]:
    """The package layers of the sandboxes that can still run, those the warm pools mount
    (`pinned`), and those of templates (every copy mounts them)."""
    recorded = [layer for sandbox in await store.list() if sandbox.state in LAYER_HOLDING_STATES
                for layer in sandbox.package_dirs]
    kept = ([layer for template in await templates.list() for layer in template.package_dirs]
            if templates is not None else [])
    return [*recorded, *(pinned or ()), *kept]


def _pip_installer(
    settings: Settings, store: SandboxStore, metrics: Metrics, capacity: Capacity,
    pinned: set[str], templates: TemplateStore,
) -> PackageInstaller:
    return PipPackageInstaller(settings, in_use=partial(layers_held, store, pinned, templates),
                               metrics=metrics, capacity=capacity)


async def _opened(adapter: T) -> AsyncIterator[T]:
    """Starts the chosen adapter (runtime, installer, database) with the app and closes it on
    shutdown; the fakes need neither."""
    start = getattr(adapter, "start", None)
    if start is not None:
        await start()
    try:
        yield adapter
    finally:
        close = getattr(adapter, "close", None)
        if close is not None:
            closing = close()
            if inspect.isawaitable(closing):
                await closing


def _sqlite_database(settings: Settings) -> SqliteDatabase:
    return SqliteDatabase(settings.state_dir / "sandboxes.db")


def _postgres_database(settings: Settings) -> PostgresDatabase:
    return PostgresDatabase(settings.database_url)


def _output_log(settings: Settings) -> OutputLog:
    return FileOutputLog(settings.state_dir / "outputs")


def _template_images(settings: Settings) -> FolderTemplateImages:
    return FolderTemplateImages(settings.templates)


def _templates(store: TemplateStore, images: TemplateImages) -> Templates:
    return Templates(store, images)


def _warm_pool(
    settings: Settings,
    runtime: SandboxRuntime,
    capacity: Capacity,
    metrics: Metrics,
    installer: PackageInstaller,
    pinned: set[str],
    templates: Templates,
) -> WarmPool:
    return WarmPool(
        runtime, settings.pool_profiles(), settings.default_limits(), settings.pool_modules(),
        capacity, metrics, installer,
        PoolTuning(refill_concurrency=settings.pool_refill_concurrency), pinned_layers=pinned,
        templates=templates,
    )


async def _served(
    runtime: SandboxRuntime,
    store: SandboxStore,
    outputs: OutputLog,
    policy: LifecyclePolicy,
    shared: SharedState,
    reap_interval_s: float,
    capacity: Capacity,
    metrics: Metrics,
    installer: PackageInstaller,
    package_policy: PackagePolicy,
    database: object,
    pool: WarmPool,
    templates: Templates,
    stop_requested: asyncio.Event,
) -> AsyncIterator[Sandboxes]:
    """What the use cases share, reconciled with the host before the first request, with its
    background work until shutdown: the reaper, the lease heartbeat and the handoff service;
    the warm pools fill once the reconcile has removed what a crash left (pooled sandboxes
    included), and are emptied on the way out. What runs is checkpointed as soon as a stop is
    requested (SIGTERM), while the last requests drain, or at the end otherwise; the
    heartbeat goes on meanwhile, so no lease expires under a checkpoint. `database` is only
    held: the store reaches it through a Selector, which the container's shutdown order does
    not see, and the use cases must shut down (suspending what runs, writing records) before
    the database does."""
    sandboxes = Sandboxes(runtime, store, outputs, policy, shared, capacity=capacity,
                          metrics=metrics, installer=installer, package_policy=package_policy,
                          pool=pool, templates=templates)
    heartbeat = asyncio.create_task(leases.keep_leases(sandboxes))
    reconciled = await _reconciled(sandboxes)
    if reconciled:
        await pool.start()
    reaper = asyncio.create_task(_reap_forever(sandboxes, reap_interval_s, reconciled, pool))
    handoffs = asyncio.create_task(handoff.serve_handoffs(sandboxes))
    stopping = asyncio.create_task(_shut_down_when(stop_requested, sandboxes))
    try:
        yield sandboxes
    finally:
        for task in (reaper, handoffs):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await pool.close()
        stop_requested.set()
        await stopping
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat


async def _shut_down_when(stop_requested: asyncio.Event, sandboxes: Sandboxes) -> None:
    await stop_requested.wait()
    log.info("server.stopping", running_here=len(sandboxes.ownership.held))
    await shutdown.shut_down(sandboxes)


async def _reconciled(sandboxes: Sandboxes) -> bool:
    # A broken runtime (runsc missing) must not stop the server from starting: /readyz says
    # what is wrong, and the reaper retries until it works.
    try:
        await reconciliation.reconcile(sandboxes)
    except Exception:
        log.exception("sandbox.reconcile_failed")
        return False
    return True


async def _reap_forever(
    sandboxes: Sandboxes, interval_s: float, reconciled: bool, pool: WarmPool
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        if not reconciled:
            reconciled = await _reconciled(sandboxes)
            if reconciled:
                await pool.start()
            continue
        try:
            await reaping.reap(sandboxes)
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

    lifecycle_policy = providers.Singleton(_lifecycle_policy, settings)

    # One registry per container, so that apps built side by side (tests) never share series.
    metrics = providers.Singleton(PrometheusMetrics)

    # One admission for ephemeral executions, managed sandboxes and the calls in them: they
    # share the host's memory, and calls are bounded in number.
    capacity = providers.Singleton(
        Capacity,
        max_executions=settings.provided.max_concurrent_executions,
        memory_budget_mb=settings.provided.max_total_memory_mb,
        wait_s=settings.provided.capacity_wait_s,
        metrics=metrics,
        max_calls=settings.provided.max_concurrent_calls,
    )

    # Singletons, not Resources: a Resource branch would be initialised even when not chosen.
    runtime_adapter = providers.Selector(
        settings.provided.runtime,
        fake=providers.Singleton(_fake_runtime, settings),
        runsc=providers.Singleton(_runsc_runtime, settings, metrics),
    )

    runtime = providers.Resource(_opened, runtime_adapter)

    # Package layers the warm pools mount: the installer's cache must not evict them.
    pinned_layers: providers.Singleton[set[str]] = providers.Singleton(set)

    # Shared state: SQLite in the state folder for one instance (both runtimes: the fake's
    # tests prove records survive a restart), PostgreSQL when SANDBOX_DATABASE_URL names one
    # that several instances share. Singletons under one Resource, as for the runtime.
    database_adapter = providers.Selector(
        settings.provided.store_backend,
        sqlite=providers.Singleton(_sqlite_database, settings),
        postgres=providers.Singleton(_postgres_database, settings),
    )

    database = providers.Resource(_opened, database_adapter)

    store = providers.Selector(
        settings.provided.store_backend,
        sqlite=providers.Singleton(SqliteSandboxStore, database),
        postgres=providers.Singleton(PostgresSandboxStore, database),
    )

    leases = providers.Selector(
        settings.provided.store_backend,
        sqlite=providers.Singleton(SqliteLeaseStore, database),
        postgres=providers.Singleton(PostgresLeaseStore, database),
    )

    handoffs = providers.Selector(
        settings.provided.store_backend,
        sqlite=providers.Singleton(SqliteHandoffRequests, database),
        postgres=providers.Singleton(PostgresHandoffRequests, database),
    )

    # Detached output: files in the state folder, or the shared database so that every
    # instance reads it and it outlives the instance that ran the script.
    outputs = providers.Selector(
        settings.provided.store_backend,
        sqlite=providers.Singleton(_output_log, settings),
        postgres=providers.Singleton(PostgresOutputLog, database),
    )

    # One instance needs no more than signals within the process.
    signals = providers.Selector(
        settings.provided.store_backend,
        sqlite=providers.Singleton(InMemorySignals),
        postgres=providers.Singleton(PostgresSignals, database),
    )

    # Templates: records beside the sandboxes' (SQLite or PostgreSQL), images in a folder.
    template_store = providers.Selector(
        settings.provided.store_backend,
        sqlite=providers.Singleton(SqliteTemplateStore, database),
        postgres=providers.Singleton(PostgresTemplateStore, database),
    )

    template_images = providers.Resource(
        _opened, providers.Singleton(_template_images, settings))

    templates = providers.Singleton(_templates, template_store, template_images)

    # Checkpoint images, in a folder every instance mounts (or the state folder).
    images = providers.Resource(_opened, providers.Singleton(_image_store, settings))

    shared = providers.Singleton(
        SharedState, images=images, leases=leases, handoffs=handoffs, signals=signals,
        instance_id=providers.Singleton(_owner_id, settings),
    )

    # Set on SIGTERM (by the server), to start checkpointing before the requests drain.
    stop_requested = providers.Singleton(asyncio.Event)

    package_policy = providers.Singleton(_package_policy, settings)

    # Packages install with pip on the host for the real runtime; the fake installs nothing.
    package_installer = providers.Resource(
        _opened,
        providers.Selector(
            settings.provided.runtime,
            fake=providers.Singleton(FakePackageInstaller, metrics=metrics,
                                     policy=package_policy),
            runsc=providers.Singleton(_pip_installer, settings, store, metrics, capacity,
                                      pinned_layers, template_store),
        ),
    )

    warm_pool = providers.Singleton(
        _warm_pool, settings, runtime, capacity, metrics, package_installer, pinned_layers,
        templates,
    )

    # The operator's egress allow-list: every sandbox's list must stay within it.
    egress_policy = providers.Singleton(_egress_policy, settings)

    # Resources are started after the resources they depend on and shut down before them, so
    # the use cases have a started runtime and an open store for as long as they serve.
    sandboxes = providers.Resource(
        _served,
        runtime=runtime,
        store=store,
        outputs=outputs,
        policy=lifecycle_policy,
        shared=shared,
        reap_interval_s=settings.provided.reap_interval_s,
        capacity=capacity,
        metrics=metrics,
        installer=package_installer,
        package_policy=package_policy,
        database=database,
        pool=warm_pool,
        templates=templates,
        stop_requested=stop_requested,
    )
