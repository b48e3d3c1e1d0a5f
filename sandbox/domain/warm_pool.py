"""Warm pools: sandboxes started ahead of demand, each serving exactly one `/execute`.

Policy, in one place:
- Each profile (see `pool_profiles`) is kept at its size by a background refiller that
  starts at most `refill_concurrency` sandboxes at once, fullest profile last, and waits
  `backoff` (doubling, capped) after a failed start of a profile before trying it again.
- A pooled sandbox holds its memory limit in the shared `Capacity` from the moment its
  start begins until it is destroyed, so pools and requests never promise the host more
  memory than the budget. Pools never starve requests: the refiller only takes memory that
  is free while nobody waits for it, and a request (or a new sandbox) that finds too little
  makes the pool give back idle sandboxes (and abandon starts) until it fits.
- A request takes a sandbox of the profile that matches its language, limits and package
  layers exactly (its own timeout aside: the host's timer applies it); it runs its script
  there, and the sandbox is destroyed in the background once the answer is known. A
  request that fits no profile, or finds its profile empty, takes the cold path.
- A template's profile keeps copies of the template (restored under new ids, waiting) for
  `/execute?template=`; the script runs in a copy as an exec would. Its record (limits,
  packages, network) is read when the profile first fills; a template that is missing, or
  was made under another runtime identity, is retried with the backoff.
- `close` ends the refiller, abandons starts and destroys every pooled sandbox, in use or
  not; a crash leaves them to the next start's reconcile (they have no record, so they are
  removed as leftovers), which runs before the pool starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field

import structlog

from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.metrics import Metrics, NoMetrics, PoolMiss
from sandbox.domain.model import Language, Limits, Outcome, Program, SandboxSpec, Stream, Template
from sandbox.domain.packages import RequirementSet
from sandbox.domain.pool_profiles import PoolProfile
from sandbox.domain.ports import OutputSink, PackageInstaller, SandboxRuntime
from sandbox.domain.templates import Templates

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PoolTuning:
    refill_concurrency: int = 1
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    # How often the refiller looks again while memory or a backoff holds it back.
    poll_s: float = 1.0


@dataclass(frozen=True)
class WarmLease:
    """A pooled sandbox taken by one request."""

    sandbox_id: str
    profile: str
    memory_mb: int
    # A copy of this template: the script runs in it as an exec.
    template_id: str | None = None


@dataclass
class _Profile:
    profile: PoolProfile
    limits: Limits
    # None until the profile's package layer is installed (at its first start).
    package_dirs: tuple[str, ...] | None
    ready: deque[str] = field(default_factory=deque)
    starting: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    failures: int = 0
    retry_at: float = 0.0
    # A template's profile: its record, once read (its copies are made with it).
    template: Template | None = None

    @property
    def wanted(self) -> int:
        if self.profile.template_id is not None and self.template is None:
            return 0  # not known yet: read first
        return self.profile.size - len(self.ready) - len(self.starting)

    def fits(self, language: Language, limits: Limits, package_dirs: tuple[str, ...]) -> bool:
        return (self.profile.template_id is None and self.profile.language is language
                and package_dirs == self.package_dirs
                and dataclasses.replace(limits, timeout_s=self.limits.timeout_s) == self.limits)

    def spec(self, sandbox_id: str) -> SandboxSpec:
        assert self.package_dirs is not None
        if self.template is None:
            return SandboxSpec(sandbox_id=sandbox_id, limits=self.limits,
                               package_dirs=self.package_dirs)
        return SandboxSpec(sandbox_id=sandbox_id, limits=self.limits,
                           package_dirs=self.package_dirs, env=self.template.env,
                           network_allow=self.template.network_allow)


class WarmPool:
    def __init__(
        self,
        runtime: SandboxRuntime,
        profiles: tuple[PoolProfile, ...],
        limits: Limits,
        preimport: tuple[str, ...],
        capacity: Capacity,
        metrics: Metrics | None = None,
        installer: PackageInstaller | None = None,
        tuning: PoolTuning | None = None,
        pinned_layers: set[str] | None = None,
        templates: Templates | None = None,
    ) -> None:
        """`limits` are the server's defaults: a profile changes only the memory limit. The
        package layers the profiles mount are added to `pinned_layers` (kept from eviction)."""
        self._runtime = runtime
        self._preimport = preimport
        self._capacity = capacity
        self._metrics = metrics or NoMetrics()
        self._installer = installer
        self._templates = templates
        self._pinned = pinned_layers if pinned_layers is not None else set()
        self._tuning = tuning or PoolTuning()
        self._profiles = [
            _Profile(profile, dataclasses.replace(limits, memory_mb=profile.memory_mb or
                                                  limits.memory_mb),
                     None if profile.requirements else ())
            for profile in profiles
        ]
        self._taken: dict[str, WarmLease] = {}
        # Sandboxes being given up (spent, reclaimed, shut down): id -> memory still held.
        self._leaving: dict[str, int] = {}
        self._destroys: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._refiller: asyncio.Task[None] | None = None
        self._closed = False

    def template_ids(self) -> set[str]:
        """The templates the profiles keep copies of."""
        return {state.profile.template_id for state in self._profiles
                if state.profile.template_id is not None}

    def sizes(self) -> dict[str, int]:
        """Ready sandboxes per profile."""
        return {state.profile.name: len(state.ready) for state in self._profiles}

    async def start(self) -> None:
        """Begin filling (after the reconcile: it would take pooled sandboxes for orphans)."""
        if not self._profiles or self._refiller is not None or self._closed:
            return
        self._capacity.reclaim_with(self.reclaim)
        self._refiller = asyncio.create_task(self._refill_forever())
        log.info("pool.started", profiles={state.profile.name: state.profile.size
                                           for state in self._profiles},
                 preimport=list(self._preimport))

    # Requests ---------------------------------------------------------------------------

    def take(
        self, language: Language, limits: Limits, package_dirs: tuple[str, ...]
    ) -> WarmLease | None:
        """A ready sandbox for this script, or None (the request runs cold)."""
        return self._lease(next((state for state in self._profiles
                                 if state.fits(language, limits, package_dirs)), None))

    def take_template(self, template_id: str) -> WarmLease | None:
        """A ready copy of the template, or None (the request restores one itself)."""
        return self._lease(next((state for state in self._profiles
                                 if state.profile.template_id == template_id), None))

    def _lease(self, state: _Profile | None) -> WarmLease | None:
        miss = self._miss(state)
        if miss is not None:
            self._metrics.pool_missed(miss)
            return None
        assert state is not None
        lease = WarmLease(state.ready.popleft(), state.profile.name, state.limits.memory_mb,
                          state.profile.template_id)
        self._taken[lease.sandbox_id] = lease
        self._metrics.pool_hit(lease.profile)
        self._sized(state)
        self._wake.set()
        return lease

    def _miss(self, state: _Profile | None) -> PoolMiss | None:
        if not self._profiles:
            return "disabled"
        if self._refiller is None or self._closed:
            return "stopped"
        if state is None:
            return "no_profile"
        return None if state.ready else "empty"

    async def run(
        self, lease: WarmLease, program: Program, sink: OutputSink, timeout_s: float
    ) -> Outcome:
        """Run the request's script in its sandbox, which is destroyed afterwards (in the
        background: the answer does not wait for it)."""
        try:
            if lease.template_id is not None:
                return await self._runtime.exec(lease.sandbox_id, program, sink, b"", timeout_s)
            return await self._runtime.run_warm(lease.sandbox_id, program, sink, timeout_s)
        finally:
            if lease.sandbox_id in self._taken:  # else shut down meanwhile, and destroyed
                self._leave(lease.sandbox_id, lease.memory_mb)

    def give_back(self, lease: WarmLease) -> None:
        """A lease whose request never ran (refused or gone before it started)."""
        if self._taken.pop(lease.sandbox_id, None) is None:
            return
        state = next(state for state in self._profiles if state.profile.name == lease.profile)
        if self._closed:
            self._leave(lease.sandbox_id, lease.memory_mb)
            return
        state.ready.appendleft(lease.sandbox_id)
        # Its replacement may have started meanwhile: keep the profile at its size.
        if state.wanted < 0:
            starting = next((task for task in state.starting.values() if not task.done()), None)
            if starting is not None:
                starting.cancel()
            else:
                self._leave(state.ready.pop(), state.limits.memory_mb)
        self._sized(state)

    # Memory for requests ------------------------------------------------------------------

    def reclaim(self, shortfall_mb: int) -> None:
        """A request lacks `shortfall_mb` of memory: give up idle sandboxes, then starts in
        flight, until what is being freed covers it (their memory is released as each is
        destroyed, which wakes the request)."""
        shortfall_mb -= sum(self._leaving.values())
        for state in sorted(self._profiles, key=lambda state: -state.limits.memory_mb):
            while shortfall_mb > 0 and state.ready:
                sandbox_id = state.ready.pop()
                self._leave(sandbox_id, state.limits.memory_mb)
                shortfall_mb -= state.limits.memory_mb
                log.info("pool.reclaimed", profile=state.profile.name, sandbox_id=sandbox_id)
            self._sized(state)
            for sandbox_id, task in list(state.starting.items()):
                if shortfall_mb <= 0:
                    break
                if not task.done() and sandbox_id not in self._leaving:
                    self._leaving[sandbox_id] = state.limits.memory_mb
                    shortfall_mb -= state.limits.memory_mb
                    task.cancel()

    # Refilling ------------------------------------------------------------------------------

    async def _refill_forever(self) -> None:
        while True:
            self._wake.clear()
            await self._read_templates()
            self._start_what_fits()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tuning.poll_s):
                    await self._wake.wait()

    def _start_what_fits(self) -> None:
        now = time.monotonic()
        while self._starting_count() < self._tuning.refill_concurrency:
            candidates = [state for state in self._profiles
                          if state.wanted > 0 and state.retry_at <= now]
            if not candidates:
                return
            state = min(candidates,
                        key=lambda state: (len(state.ready) + len(state.starting))
                        / state.profile.size)
            sandbox_id = new_sandbox_id()
            if not self._capacity.try_reserve(sandbox_id, state.limits.memory_mb):
                return  # no spare memory now: looked at again when woken or polled
            state.starting[sandbox_id] = asyncio.create_task(self._start_one(state, sandbox_id))

    async def _read_templates(self) -> None:
        """Read the record of each template profile not read yet (due for a try)."""
        now = time.monotonic()
        for state in self._profiles:
            template_id = state.profile.template_id
            if template_id is None or state.template is not None or state.retry_at > now:
                continue
            try:
                state.template = await self._template(template_id)
            except Exception as error:
                self._failed(state, error)
                continue
            state.limits = state.template.limits
            state.package_dirs = state.template.package_dirs
            self._pinned.update(state.package_dirs)

    async def _template(self, template_id: str) -> Template:
        if self._templates is None:
            raise RuntimeFailure("this server keeps no templates")
        template = await self._templates.store.get(template_id)
        if template is None:
            raise RuntimeFailure(f"there is no template {template_id}")
        if dict(template.identity) != self._runtime.identity:
            raise RuntimeFailure(f"the template {template_id} was made under another runtime "
                                 "identity; it cannot be restored here")
        return template

    def _starting_count(self) -> int:
        return sum(len(state.starting) for state in self._profiles)

    async def _start_one(self, state: _Profile, sandbox_id: str) -> None:
        started = time.monotonic()
        try:
            if state.package_dirs is None:
                assert self._installer is not None
                layer = await self._installer.layer_for(
                    RequirementSet(state.profile.requirements))
                state.package_dirs = (layer,)
                self._pinned.add(layer)
            await self._start_sandbox(state, state.spec(sandbox_id))
        except asyncio.CancelledError:
            self._release(sandbox_id)  # the runtime has removed what it started
            raise
        except Exception as error:  # a failed start must not end the refiller
            self._release(sandbox_id)
            self._failed(state, error)
        else:
            state.failures = 0
            state.ready.append(sandbox_id)
            self._metrics.pool_refilled(state.profile.name, time.monotonic() - started)
            self._sized(state)
        finally:
            state.starting.pop(sandbox_id, None)
            self._wake.set()

    async def _start_sandbox(self, state: _Profile, spec: SandboxSpec) -> None:
        if state.profile.template_id is not None:
            assert self._templates is not None
            image = await self._templates.images.local(state.profile.template_id)
            await self._runtime.restore(spec, image, _Nowhere())
            return
        language = state.profile.language
        assert language is not None
        preimport = self._preimport if language is Language.PYTHON else ()
        await self._runtime.start_warm(spec, language, preimport)

    def _failed(self, state: _Profile, error: Exception) -> None:
        state.failures += 1
        delay = min(self._tuning.max_backoff_s,
                    self._tuning.backoff_s * 2 ** (state.failures - 1))
        state.retry_at = time.monotonic() + delay
        self._metrics.pool_refill_failed(state.profile.name)
        message = error.message if isinstance(error, RuntimeFailure) else repr(error)
        log.warning("pool.refill_failed", profile=state.profile.name, error=message,
                    failures=state.failures, retry_in_s=delay)

    # Giving sandboxes up ------------------------------------------------------------------

    def _leave(self, sandbox_id: str, memory_mb: int) -> None:
        """Destroy a sandbox in the background; its memory is released once it is gone."""
        self._taken.pop(sandbox_id, None)
        self._leaving[sandbox_id] = memory_mb
        task = asyncio.create_task(self._destroy(sandbox_id))
        self._destroys.add(task)
        task.add_done_callback(self._destroys.discard)

    async def _destroy(self, sandbox_id: str) -> None:
        try:
            await self._runtime.destroy(sandbox_id)
        except Exception:  # left to the next start's reconcile
            log.exception("pool.destroy_failed", sandbox_id=sandbox_id)
        finally:
            self._release(sandbox_id)
            self._wake.set()

    def _release(self, sandbox_id: str) -> None:
        self._leaving.pop(sandbox_id, None)
        self._capacity.release(sandbox_id)

    def _sized(self, state: _Profile) -> None:
        self._metrics.pool_size(state.profile.name, len(state.ready))

    async def close(self) -> None:
        """Stop refilling and destroy every pooled sandbox (idle, starting or in use)."""
        self._closed = True
        self._capacity.reclaim_with(None)
        tasks = [task for task in (self._refiller,) if task is not None]
        tasks += [task for state in self._profiles for task in state.starting.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for state in self._profiles:
            while state.ready:
                self._leave(state.ready.pop(), state.limits.memory_mb)
            self._sized(state)
        for lease in list(self._taken.values()):
            self._leave(lease.sandbox_id, lease.memory_mb)
        while self._destroys:
            await asyncio.gather(*self._destroys, return_exceptions=True)
        log.info("pool.stopped")


class _Nowhere(OutputSink):
    """Where a pooled copy's own output goes before its request (a template's processes may
    print): nobody's."""

    async def write(self, stream: Stream, data: bytes) -> None:
        return None
