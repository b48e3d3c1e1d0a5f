"""The dependency-injection container: picks the adapters the settings ask for."""

from __future__ import annotations

from collections.abc import AsyncIterator

from dependency_injector import containers, providers

from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.domain.limits import LimitPolicy
from sandbox.domain.ports import SandboxRuntime
from sandbox.settings import Settings


def _runsc_runtime(settings: Settings) -> SandboxRuntime:
    # Imported when chosen, so that the fake runtime works where the runsc adapter cannot load.
    from sandbox.adapters.runsc.runtime import RunscSandboxRuntime

    return RunscSandboxRuntime(settings)


async def _opened(runtime: SandboxRuntime) -> AsyncIterator[SandboxRuntime]:
    """Starts the chosen runtime with the app and closes it on shutdown (the fake needs neither)."""
    start = getattr(runtime, "start", None)
    if start is not None:
        await start()
    try:
        yield runtime
    finally:
        close = getattr(runtime, "close", None)
        if close is not None:
            await close()


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)

    limit_policy = providers.Singleton(
        LimitPolicy,
        defaults=settings.provided.default_limits.call(),
        max_timeout_s=settings.provided.max_timeout_s,
        max_memory_mb=settings.provided.max_memory_mb,
    )

    # Singletons, not Resources: a Resource branch would be initialised even when not chosen.
    runtime_adapter = providers.Selector(
        settings.provided.runtime,
        fake=providers.Singleton(FakeSandboxRuntime),
        runsc=providers.Singleton(_runsc_runtime, settings),
    )

    runtime = providers.Resource(_opened, runtime_adapter)
