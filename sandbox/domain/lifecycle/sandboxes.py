"""What every use case of sandboxes shares: the ports, the policy, the capacity, and per
sandbox a lock, a count of the calls at work in it and its supervisor task.

Every change of a sandbox's state happens under that sandbox's lock, after re-reading its
record, so concurrent calls on one sandbox are serialised, never interleaved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import InvalidRequest, InvalidState, SandboxNotFound
from sandbox.domain.ids import checked_sandbox_id
from sandbox.domain.lifecycle.admission import Admission
from sandbox.domain.metrics import Metrics, NoMetrics
from sandbox.domain.model import Language, Sandbox, SandboxState, can_move
from sandbox.domain.packages import PackagePolicy, package_layers
from sandbox.domain.ports import OutputLog, PackageInstaller, SandboxRuntime, SandboxStore
from sandbox.domain.reasons import Reason
from sandbox.domain.templates import Templates
from sandbox.domain.warm_pool import WarmPool


@dataclass(frozen=True)
class LifecyclePolicy:
    """Its defaults are settings (`Settings.lifecycle_policy`), kept there alone."""

    max_running: int
    retention_s: float
    suspended_retention_s: float
    max_file_bytes: int
    suspend_on_shutdown: bool
    shutdown_grace_s: float
    # Code contexts: how many one sandbox may have, and the results one cell may answer with.
    max_contexts: int
    cell_result_bytes: int
    # The most copies one fork makes.
    max_fork: int


class Sandboxes:
    def __init__(
        self,
        runtime: SandboxRuntime,
        store: SandboxStore,
        outputs: OutputLog,
        policy: LifecyclePolicy,
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
        self.admission = Admission(store, self.capacity, policy.max_running)
        # Calls (execs, file calls) at work in each sandbox: suspend and the reaper wait for
        # none to be at work.
        self.busy: Counter[str] = Counter()
        self.supervisors: dict[str, asyncio.Task[None]] = {}
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
        given; a sandbox that no longer runs gives its memory back."""
        if state is not sandbox.state and not can_move(sandbox.state, state):
            raise InvalidState(f"a {sandbox.state.value} sandbox cannot become {state.value}")
        if reason is not None:
            changes.update(reason=reason.text, reason_code=reason.code)
        updated = dataclasses.replace(sandbox, state=state, updated_at=self.clock(),
                                      **changes)  # type: ignore[arg-type]
        await self.store.save(updated)
        if state not in (SandboxState.CREATING, SandboxState.RUNNING):
            self.capacity.release(sandbox.sandbox_id)
        return updated

    async def touch(self, sandbox: Sandbox) -> Sandbox:
        touched = dataclasses.replace(sandbox, last_activity_at=self.clock())
        await self.store.save(touched)
        return touched

    async def package_layers(
        self, language: Language | None, source: bytes, packages: Iterable[str]
    ) -> tuple[str, ...]:
        """The package folders to mount (see `packages.package_layers`)."""
        return await package_layers(self.installer, language, source, packages,
                                    self.package_policy)
