"""What every use case of sandboxes shares: the ports, the policy, the capacity, the leases
this instance holds, and per sandbox a lock, a count of the calls at work in it and its
supervisor task.

Every change of a sandbox's state happens under that sandbox's lock, after re-reading its
record, so concurrent calls on one sandbox are serialised, never interleaved. Between
instances, the lease decides: only the instance holding a sandbox's lease runs it and writes
its record while it runs (fenced writes); on one instance the lease is always its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import InvalidRequest, InvalidState, LeaseLost, SandboxNotFound
from sandbox.domain.ids import checked_sandbox_id
from sandbox.domain.image_store import ImageStore
from sandbox.domain.lifecycle.admission import Admission
from sandbox.domain.lifecycle.ownership import Ownership
from sandbox.domain.metrics import Metrics, NoMetrics
from sandbox.domain.model import Language, Sandbox, SandboxState, can_move
from sandbox.domain.packages import PackagePolicy, package_layers
from sandbox.domain.ports import (
    HandoffRequests,
    LeaseStore,
    OutputLog,
    PackageInstaller,
    SandboxRuntime,
    SandboxStore,
    Signals,
)
from sandbox.domain.reasons import Reason
from sandbox.domain.templates import Templates
from sandbox.domain.warm_pool import WarmPool

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LifecyclePolicy:
    """Its defaults are settings (`Settings.lifecycle_policy`), kept there alone."""

    max_running: int
    retention_s: float
    suspended_retention_s: float
    max_file_bytes: int
    suspend_on_shutdown: bool
    shutdown_grace_s: float
    # Checkpoints at once when the server stops (each is disk and CPU bound).
    shutdown_concurrency: int
    # A lease lives this long unless renewed (every third of it).
    lease_ttl_s: float
    # A call waits this long for another instance to hand a sandbox over, then gets a 503.
    handoff_timeout_s: float
    # Code contexts: how many one sandbox may have, and the results one cell may answer with.
    max_contexts: int
    cell_result_bytes: int
    # The most copies one fork makes.
    max_fork: int


@dataclass(frozen=True)
class SharedState:
    """The ports through which instances share sandboxes: checkpoint images, leases, handoff
    requests and signals. The store given to `Sandboxes` must check its fenced writes
    against these very leases. `instance_id` names this instance as an owner."""

    images: ImageStore
    leases: LeaseStore
    handoffs: HandoffRequests
    signals: Signals
    instance_id: str


class Sandboxes:
    def __init__(
        self,
        runtime: SandboxRuntime,
        store: SandboxStore,
        outputs: OutputLog,
        policy: LifecyclePolicy,
        shared: SharedState,
        *,
        clock: Callable[[], float] = time.time,
        capacity: Capacity | None = None,
        metrics: Metrics | None = None,
        installer: PackageInstaller | None = None,
        package_policy: PackagePolicy | None = None,
        pool: WarmPool | None = None,
        templates: Templates | None = None,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.outputs = outputs
        self.policy = policy
        self.images = shared.images
        self.handoffs = shared.handoffs
        self.signals = shared.signals
        self.instance_id = shared.instance_id
        self.ownership = Ownership(shared.leases, shared.instance_id, policy.lease_ttl_s)
        self.clock = clock
        # Shared by ephemeral executions, managed sandboxes and calls in them: a running
        # sandbox holds its memory limit there from admission until it stops running (see
        # `save`) or is deleted.
        self.capacity = capacity or Capacity(sys.maxsize, sys.maxsize, 0.0, max_calls=sys.maxsize)
        self.metrics = metrics or NoMetrics()
        self.installer = installer
        self.package_policy = package_policy or PackagePolicy()
        # Warm sandboxes for /execute, when the server keeps any.
        self.pool = pool
        # Where templates are kept, when the server keeps any.
        self.kept_templates = templates
        self.admission = Admission(store, self.capacity, policy.max_running, self.ownership)
        # Calls (execs, file calls) at work in each sandbox: suspend and the reaper wait for
        # none to be at work.
        self.busy: Counter[str] = Counter()
        self.supervisors: dict[str, asyncio.Task[None]] = {}
        # Calls waiting for another instance to hand a sandbox over, woken by its signal.
        self.handed_over: dict[str, asyncio.Event] = {}
        # Sandboxes asked for by another instance while at work here: handed off once idle.
        self.wanted: set[str] = set()
        # Owner-side handoff work started from signals.
        self.background: set[asyncio.Task[None]] = set()
        # Set when the server stops: no call waits for a handoff any more.
        self.stopping = False
        # When orphaned checkpoint images were last collected (by `clock`).
        self.collected_at = 0.0
        self._locks: dict[str, asyncio.Lock] = {}
        # Held while a context starts, so that two starts cannot pass the cap together.
        self._context_locks: dict[str, asyncio.Lock] = {}

    @property
    def templates(self) -> Templates:
        if self.kept_templates is None:
            raise InvalidRequest("this server keeps no templates")
        return self.kept_templates

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def context_lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._context_locks.setdefault(sandbox_id, asyncio.Lock())

    def forget(self, sandbox_id: str) -> None:
        """Drop the locks of a sandbox that is gone."""
        self._locks.pop(sandbox_id, None)
        self._context_locks.pop(sandbox_id, None)

    async def get(self, sandbox_id: str) -> Sandbox:
        sandbox = await self.store.get(checked_sandbox_id(sandbox_id))
        if sandbox is None:
            raise SandboxNotFound(f"no sandbox with id {sandbox_id!r}")
        return sandbox

    async def require(self, sandbox_id: str, state: SandboxState, verb: str) -> Sandbox:
        sandbox = await self.get(sandbox_id)
        if sandbox.state is not state:
            raise InvalidState(
                f"cannot {verb} a sandbox that is {sandbox.state.value} (it must be "
                f"{state.value})"
            )
        return sandbox

    async def save(
        self,
        sandbox: Sandbox,
        state: SandboxState,
        reason: Reason | None = None,
        **changes: object,
    ) -> Sandbox:
        """Move to `state` (a move the state machine allows) with the reason and changes
        given; a sandbox that no longer runs gives its memory back. The write is fenced by
        the sandbox's lease while this instance holds it (see `write`)."""
        if state is not sandbox.state and not can_move(sandbox.state, state):
            raise InvalidState(f"a {sandbox.state.value} sandbox cannot become {state.value}")
        if reason is not None:
            changes.update(reason=reason.text, reason_code=reason.code)
        updated = dataclasses.replace(sandbox, state=state, updated_at=self.clock(),
                                      **changes)  # type: ignore[arg-type]
        await self.write(updated)
        if state not in (SandboxState.CREATING, SandboxState.RUNNING):
            self.capacity.release(sandbox.sandbox_id)
        return updated

    async def touch(self, sandbox: Sandbox) -> Sandbox:
        touched = dataclasses.replace(sandbox, last_activity_at=self.clock())
        await self.write(touched)
        return touched

    async def write(self, sandbox: Sandbox) -> None:
        """Save the record, fenced by our lease when we hold one. LeaseLost means another
        instance took the sandbox over: its container here is ended, and we never write
        for it again."""
        fence = self.ownership.lease(sandbox.sandbox_id)
        try:
            await self.store.save(sandbox, fence=fence)
        except LeaseLost:
            await self.lost_here(sandbox.sandbox_id)
            raise

    async def remove_record(self, sandbox_id: str) -> None:
        """Remove the record, fenced as `write` is."""
        try:
            await self.store.remove(sandbox_id, fence=self.ownership.lease(sandbox_id))
        except LeaseLost:
            await self.lost_here(sandbox_id)
            raise

    async def lost_here(self, sandbox_id: str) -> None:
        """Its lease is gone: end its container here and forget it, writing nothing."""
        if self.ownership.forget(sandbox_id) is None and sandbox_id not in self.supervisors:
            return
        log.warning("sandbox.lease_lost", sandbox_id=sandbox_id,
                    detail="another instance owns it now, or its lease expired")
        try:
            await self.runtime.destroy(sandbox_id)
        finally:
            self.capacity.release(sandbox_id)

    async def package_layers(
        self, language: Language | None, source: bytes, packages: Iterable[str]
    ) -> tuple[str, ...]:
        """The package folders to mount (see `packages.package_layers`)."""
        return await package_layers(self.installer, language, source, packages,
                                    self.package_policy)

    async def layer_pins(self, layers: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
        """The releases of each layer, to rebuild them on another instance; empty when one
        is not known (such a sandbox restores only where its layers are)."""
        if not layers or self.installer is None:
            return ()
        pins = [await self.installer.pins_of(layer) for layer in layers]
        return tuple(found for found in pins if found is not None) \
            if all(found is not None for found in pins) else ()

    async def layers_here(self, sandbox: Sandbox) -> tuple[str, ...]:
        """The package layers to mount for a restore on this instance: rebuilt from their
        releases (the same folders, by the same keys, where they exist already)."""
        if not sandbox.package_pins or self.installer is None:
            return sandbox.package_dirs
        return tuple([await self.installer.layer_of(pins) for pins in sandbox.package_pins])
