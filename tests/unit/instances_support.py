"""Several instances over one shared state, in one process: each its own fake runtime (its own
host) and instance id, all sharing the store, output log, leases, handoff requests, signals
and image store, as servers sharing PostgreSQL and a checkpoint bucket do."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from lifecycle_support import ControlledRuntime, NewSandboxes, policy

from sandbox.domain.lifecycle.handoff import serve_handoffs
from sandbox.domain.lifecycle.sandboxes import Sandboxes, SharedState

Instance = Callable[..., Sandboxes]


def instances(new_sandboxes: NewSandboxes, shared: SharedState, tmp_path: Path) -> Instance:
    def make(name: str, **changes: Any) -> Sandboxes:
        return new_sandboxes(policy(**changes),
                             other_runtime=ControlledRuntime(tmp_path / f"host-{name}"),
                             other_shared=dataclasses.replace(shared, instance_id=name))

    return make


def runtime_of(sandboxes: Sandboxes) -> ControlledRuntime:
    assert isinstance(sandboxes.runtime, ControlledRuntime)
    return sandboxes.runtime


@contextlib.asynccontextmanager
async def serving(*all_sandboxes: Sandboxes) -> AsyncIterator[None]:
    """The handoff service of each instance runs for the block (as the server runs it)."""
    tasks = [asyncio.create_task(serve_handoffs(sandboxes)) for sandboxes in all_sandboxes]
    for _ in range(10):  # subscribed before the block speaks
        await asyncio.sleep(0)
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def where_it_runs(sandbox_id: str, *all_sandboxes: Sandboxes) -> list[str]:
    """The instances with a container of the sandbox, and those holding its lease."""
    return sorted(
        [f"container on {sandboxes.instance_id}" for sandboxes in all_sandboxes
         if sandbox_id in runtime_of(sandboxes).live]
        + [f"lease of {sandboxes.instance_id}" for sandboxes in all_sandboxes
           if sandboxes.ownership.holds(sandbox_id)])
