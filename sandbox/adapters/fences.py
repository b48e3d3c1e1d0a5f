"""What every store says when a fenced write is refused, and the check that a fence names
the sandbox it guards."""

from __future__ import annotations

from sandbox.domain.errors import LeaseLost
from sandbox.domain.ports import Lease


def checked_fence(fence: Lease, sandbox_id: str) -> Lease:
    if fence.sandbox_id != sandbox_id:
        raise ValueError(f"a lease on {fence.sandbox_id} cannot fence a write to {sandbox_id}")
    return fence


def lease_lost(fence: Lease) -> LeaseLost:
    return LeaseLost(f"the lease of {fence.owner} on sandbox {fence.sandbox_id} (token "
                     f"{fence.token}) is no longer live: nothing was written")
