"""`PipPackageInstaller`: the PackageInstaller port with the host's pip, wheels only.

A requested set is resolved first (pip's resolver; nothing installed) and every release it
resolves to, dependencies included, is checked against the package policy; then exactly
those releases are installed (`--no-deps`) into a layer keyed by them, so that spellings
that resolve alike (`numpy!=0.0.1`, `numpy!=0.0.2`) share one layer. A set asked for before
is served through its alias without running pip (layer_cache). Builds are bounded:
MAX_PARALLEL_BUILDS run at once and SANDBOX_MAX_QUEUED_BUILDS more may wait (AtCapacity
beyond); each holds SANDBOX_PIP_MEMORY_MB of the memory budget it shares with sandboxes
while it runs, and pip is stopped at the layer limit (pip_process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog

from sandbox.adapters.layer_cache import LayerCache, finish, publish
from sandbox.adapters.pip_process import (
    PLATFORMS,
    PYTHON_TAG,
    BuildFolder,
    PipCommand,
    read_report,
)
from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import AtCapacity, PackageResolutionFailed
from sandbox.domain.metrics import Metrics, NoMetrics
from sandbox.domain.packages import PackagePolicy, RequirementSet, ResolvedSet
from sandbox.domain.ports import PackageInstaller
from sandbox.settings import Settings

log = structlog.get_logger(__name__)

MAX_PARALLEL_BUILDS = 2
# A layer asked for this recently is never evicted: a sandbox may be about to mount it.
RECENT_USE_S = 60.0
# Told to a client refused because too many builds wait: a build takes seconds to minutes.
QUEUE_RETRY_AFTER_S = 10

InUse = Callable[[], Awaitable[Collection[str]]]


class PipPackageInstaller(PackageInstaller):
    """`in_use`, when given, names the layer folders sandboxes still hold (those that can
    still run); eviction never removes those, nor the layer just built, nor one asked for in
    the last minute. `capacity`, when given, is the admission builds share with sandboxes.
    `policy` defaults to the settings' own. `pip` is the command that runs pip (tests wrap
    it)."""

    def __init__(
        self,
        settings: Settings,
        in_use: InUse | None = None,
        pip: Sequence[str] = (sys.executable, "-I", "-m", "pip"),
        metrics: Metrics | None = None,
        capacity: Capacity | None = None,
        policy: PackagePolicy | None = None,
    ) -> None:
        self._settings = settings
        self._cache = LayerCache(settings.state_dir / "packages")
        self._pip = PipCommand(settings, pip)
        self._in_use = in_use
        self._capacity = capacity
        self._policy = policy or settings.package_policy()
        self._metrics = metrics or NoMetrics()
        self._platform = ",".join(PLATFORMS)
        self._index_identity = json.dumps(
            [settings.pip_index_url, settings.find_links(), settings.pip_no_index]
        )
        self._builds: dict[str, asyncio.Task[str]] = {}
        self._slots = asyncio.Semaphore(MAX_PARALLEL_BUILDS)
        self._pip_problem: str | None = None

    async def start(self) -> None:
        """Make the cache folder and remove what a crash left half-built."""
        await asyncio.to_thread(self._cache.prepare)
        self._pip_problem = await self._pip.version_problem()

    async def close(self) -> None:
        builds = list(self._builds.values())
        for task in builds:
            task.cancel()
        await asyncio.gather(*builds, return_exceptions=True)

    def key(self, requirements: RequirementSet) -> str:
        """The address of a set as asked for (its alias)."""
        return requirements.key(PYTHON_TAG, self._platform, self._index_identity)

    def layer_key(self, resolved: ResolvedSet) -> str:
        """The address of the layer holding exactly `resolved`."""
        return resolved.key(PYTHON_TAG, self._platform, self._index_identity)

    async def readiness(self) -> list[str]:
        if self._pip_problem is None:
            self._pip_problem = await self._pip.version_problem()
        problems = [self._pip_problem] if self._pip_problem else []
        try:
            await asyncio.to_thread(self._cache.prepare_folders)
        except OSError as error:
            problems.append(
                f"the package cache {self._cache.root} cannot be made: {error.strerror}"
            )
        else:
            if not os.access(self._cache.root, os.W_OK):
                problems.append(f"the package cache {self._cache.root} is not writable")
        return problems

    async def layer_for(self, requirements: RequirementSet) -> str:
        if not requirements:
            raise ValueError("an empty requirement set has no layer")
        request_key = self.key(requirements)
        alias = self._cache.alias(request_key)
        try:
            if alias is not None:
                self._policy.check_resolved(alias.resolved)
                self._cache.touch(alias.layer)
                self._metrics.package_layer_requested("hit")
                return str(self._cache.layer(alias.layer))
            task = self._builds.get(request_key) or self._start_build(
                request_key, self._build(request_key, requirements))
            # Shielded: one caller giving up does not stop the build the others wait for.
            built = await asyncio.shield(task)
        except PackageResolutionFailed:
            self._metrics.package_layer_requested("failed")
            raise
        self._metrics.package_layer_requested("built")
        return built

    def _start_build(self, request_key: str, building: Coroutine[Any, Any, str]
                     ) -> asyncio.Task[str]:
        most = MAX_PARALLEL_BUILDS + self._settings.max_queued_builds
        if len(self._builds) >= most:
            building.close()
            message = (f"{len(self._builds)} package builds are running or waiting, the most "
                       "this server takes; retry later, or ask for a set built before")
            if self._capacity is None:
                raise AtCapacity(message, QUEUE_RETRY_AFTER_S)
            raise self._capacity.refusal("package_builds", message, QUEUE_RETRY_AFTER_S)
        task = asyncio.create_task(building)
        self._builds[request_key] = task
        task.add_done_callback(lambda done: self._forget(request_key, done))
        return task

    def _forget(self, request_key: str, task: asyncio.Task[str]) -> None:
        self._builds.pop(request_key, None)
        if not task.cancelled():
            task.exception()  # marks it retrieved: a failure nobody waits for is no warning

    async def _build(self, request_key: str, requirements: RequirementSet) -> str:
        async with self._slots, self._reserved():
            started = time.monotonic()
            build = await asyncio.to_thread(self._cache.new_build)
            try:
                layer_key = await self._resolve_and_install(request_key, requirements, build)
            except PackageResolutionFailed as error:
                log.info("packages.build_failed", reason=error.message,
                         requirements=list(requirements.requirements))
                raise
            finally:
                await asyncio.to_thread(shutil.rmtree, build.root, ignore_errors=True)
        log.info("packages.built", key=layer_key[:16], requirements=list(requirements.requirements),
                 ms=round((time.monotonic() - started) * 1000))
        await self._evict(keep=layer_key)
        return str(self._cache.layer(layer_key))

    @contextlib.asynccontextmanager
    async def _reserved(self) -> AsyncIterator[None]:
        """pip's memory, out of the budget sandboxes share, for as long as the build runs."""
        if self._capacity is None:
            yield
            return
        holder = f"package-build-{secrets.token_hex(4)}"
        await self._capacity.reserve(holder, self._settings.pip_memory_mb)
        try:
            yield
        finally:
            self._capacity.release(holder)

    async def _resolve_and_install(
        self, request_key: str, requirements: RequirementSet, build: BuildFolder
    ) -> str:
        """The key of the layer `requirements` resolve to, installed if it was not yet."""
        deadline = asyncio.get_running_loop().time() + self._settings.pip_timeout_s
        await self._pip.run(self._pip.resolve_argv(requirements, build), build, deadline)
        resolved = await asyncio.to_thread(read_report, build.report)
        self._policy.check_resolved(resolved)
        layer_key = await self._install(resolved, build, deadline)
        self._cache.remember(request_key, layer_key, resolved)
        return layer_key

    async def _install(self, resolved: ResolvedSet, build: BuildFolder, deadline: float) -> str:
        """The layer holding exactly `resolved`, installed unless another spelling (or
        instance restoring a sandbox) had it installed before; its key."""
        layer_key = self.layer_key(resolved)
        layer = self._cache.layer(layer_key)
        if layer.is_dir():
            self._cache.touch(layer_key)
        else:
            if resolved.pins:
                await self._pip.run(self._pip.install_argv(resolved, build), build, deadline)
            size = await asyncio.to_thread(finish, build.layer)
            if size > self._settings.max_layer_mb * 1024 * 1024:
                raise PackageResolutionFailed(
                    f"the packages take {size / 2**20:.0f} MB installed, more than the "
                    f"limit of {self._settings.max_layer_mb} MB"
                )
            await asyncio.to_thread(publish, build.layer, layer)
            self._cache.record(layer_key, size)
            log.info("packages.installed", key=layer_key[:16], pins=list(resolved.pins),
                     mb=round(size / 2**20, 1))
        await asyncio.to_thread(self._cache.remember_pins, layer_key, resolved)
        return layer_key

    async def pins_of(self, layer: str) -> tuple[str, ...] | None:
        path = Path(layer)
        if path.parent != self._cache.root:
            return None
        resolved = await asyncio.to_thread(self._cache.pins, path.name)
        return resolved.pins if resolved is not None else None

    async def layer_of(self, pins: tuple[str, ...]) -> str:
        resolved = ResolvedSet(tuple(sorted(pins)))
        self._policy.check_resolved(resolved)
        layer_key = self.layer_key(resolved)
        if self._cache.layer(layer_key).is_dir():
            self._cache.touch(layer_key)
            self._metrics.package_layer_requested("hit")
            return str(self._cache.layer(layer_key))
        build_key = f"pins-{layer_key}"
        task = self._builds.get(build_key) or self._start_build(
            build_key, self._install_pinned(resolved))
        built = await asyncio.shield(task)
        self._metrics.package_layer_requested("built")
        return built

    async def _install_pinned(self, resolved: ResolvedSet) -> str:
        """Exactly these releases, as the layer a set resolving to them would be."""
        async with self._slots, self._reserved():
            build = await asyncio.to_thread(self._cache.new_build)
            try:
                deadline = asyncio.get_running_loop().time() + self._settings.pip_timeout_s
                layer_key = await self._install(resolved, build, deadline)
            finally:
                await asyncio.to_thread(shutil.rmtree, build.root, ignore_errors=True)
        await self._evict(keep=layer_key)
        return str(self._cache.layer(layer_key))

    async def _evict(self, keep: str) -> None:
        """Remove least recently used layers while all of them take more than the cache
        allows. Renamed away in the event loop (so `layer_for` never hands out a layer being
        removed), then deleted in a thread, with the aliases that named them."""
        in_use = {Path(path).name for path in await self._in_use()} if self._in_use else set()
        layers = await asyncio.to_thread(self._cache.layers)
        total = sum(layer.size for layer in layers)
        limit = self._settings.package_cache_mb * 1024 * 1024
        protected = {keep, *in_use}
        now = time.time()
        doomed: list[Path] = []
        for layer in sorted(layers, key=lambda layer: layer.used_at):
            if total <= limit:
                break
            used_at = self._cache.used_at(layer.key, layer.used_at)
            if layer.key in protected or now - used_at < RECENT_USE_S:
                continue
            doomed.append(self._cache.take_away(layer.key))
            total -= layer.size
            log.info("packages.evicted", key=layer.key[:16], mb=round(layer.size / 2**20, 1))
        for target in doomed:
            await asyncio.to_thread(shutil.rmtree, target, ignore_errors=True)
        await asyncio.to_thread(self._cache.prune_aliases, bool(doomed))
