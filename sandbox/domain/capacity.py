"""Admission of sandboxes: at most so many ephemeral executions at once, and a memory budget
shared by every running sandbox (the sum of their memory limits), so that the host is never
promised more memory than it has and cannot be pushed into its own out-of-memory killer. Calls
in running sandboxes (execs, file transfers) run on memory their sandbox holds already: they
count against a number of calls at once, not against the budget.

A request over capacity waits a bounded time for room, then is refused with AtCapacity: never
a hang. Waiters are not queued in order; whoever fits when room is freed goes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import sys
from collections.abc import AsyncIterator, Callable
from typing import Literal

import structlog

from sandbox.domain.errors import AtCapacity, InvalidRequest
from sandbox.domain.metrics import CapacityLimit, Metrics, NoMetrics

log = structlog.get_logger(__name__)

# What a holder is: an ephemeral execution, a call in a running sandbox, or a managed sandbox.
_Kind = Literal["execution", "call", "sandbox"]


class Capacity:
    def __init__(
        self,
        max_executions: int,
        memory_budget_mb: int,
        wait_s: float,
        metrics: Metrics | None = None,
        *,
        max_calls: int = sys.maxsize,
    ) -> None:
        self.max_executions = max_executions
        self.memory_budget_mb = memory_budget_mb
        self.max_calls = max_calls
        self._wait_s = wait_s
        self._metrics = metrics or NoMetrics()
        self._memory: dict[str, int] = {}
        self._kinds: dict[str, _Kind] = {}
        self._tokens = itertools.count()
        # Woken at every release, to look again whether they fit now.
        self._waiters: set[asyncio.Future[None]] = set()
        # Admissions waiting for memory now, and who frees memory held ahead of demand.
        self._short_of_memory = 0
        self._reclaim: Callable[[int], None] | None = None

    @property
    def executions(self) -> int:
        return sum(kind == "execution" for kind in self._kinds.values())

    @property
    def calls(self) -> int:
        return sum(kind == "call" for kind in self._kinds.values())

    @property
    def memory_mb(self) -> int:
        return sum(self._memory.values())

    @contextlib.asynccontextmanager
    async def execution(self, memory_mb: int) -> AsyncIterator[None]:
        """A place for one ephemeral execution and its memory while the block runs; released
        however it ends (error and cancellation included)."""
        holder = f"execution-{next(self._tokens)}"
        await self._admit(holder, memory_mb, "execution")
        try:
            yield
        finally:
            self.release(holder)

    @contextlib.asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """A place for one call in a running sandbox (an exec, a file call) while the block
        runs; released however it ends (error and cancellation included)."""
        holder = f"call-{next(self._tokens)}"
        await self._admit(holder, 0, "call")
        try:
            yield
        finally:
            self.release(holder)

    async def reserve(self, holder: str, memory_mb: int) -> None:
        """Memory for a managed sandbox, held until `release(holder)`: it outlives requests."""
        self.release(holder)
        await self._admit(holder, memory_mb, "sandbox")

    def try_reserve(self, holder: str, memory_mb: int) -> bool:
        """Memory held ahead of demand (a warm pool): taken only when it is free now and no
        request waits for memory, so that it never delays one."""
        if self._short_of_memory or self.memory_mb + memory_mb > self.memory_budget_mb:
            return False
        self._memory[holder] = memory_mb
        self._kinds[holder] = "sandbox"
        return True

    def reclaim_with(self, reclaim: Callable[[int], None] | None) -> None:
        """`reclaim(shortfall_mb)` is called when an admission finds too little memory: it
        starts freeing memory held ahead of demand (releasing it as it goes)."""
        self._reclaim = reclaim

    def release(self, holder: str) -> None:
        """Idempotent: releasing what is not held does nothing."""
        if self._memory.pop(holder, None) is None:
            return
        del self._kinds[holder]
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def refusal(
        self, limit: CapacityLimit, message: str, retry_after_s: int | None = None
    ) -> AtCapacity:
        """The error for a refusal at `limit`, logged and counted."""
        log.warning("capacity.rejected", limit=limit, executions=self.executions,
                    calls=self.calls, memory_mb=self.memory_mb)
        self._metrics.capacity_rejected(limit)
        if retry_after_s is None:
            # The server just waited this long without room being freed: sooner is unlikely
            # to help.
            retry_after_s = max(1, math.ceil(self._wait_s))
        return AtCapacity(message, retry_after_s)

    async def _admit(self, holder: str, memory_mb: int, kind: _Kind) -> None:
        if memory_mb > self.memory_budget_mb:
            raise InvalidRequest(
                f"memory_mb={memory_mb} is more than the {self.memory_budget_mb} MiB this "
                "server gives all its sandboxes together"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        while (full := self._full(memory_mb, kind)) is not None:
            short = full == "memory"
            if short and self._reclaim is not None:
                self._reclaim(self.memory_mb + memory_mb - self.memory_budget_mb)
            freed = loop.create_future()
            self._waiters.add(freed)
            self._short_of_memory += short
            try:
                async with asyncio.timeout_at(deadline):
                    await freed
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(freed)
                self._short_of_memory -= short
            if loop.time() >= deadline and (full := self._full(memory_mb, kind)):
                raise self.refusal(full, self._message(full, memory_mb))
        self._memory[holder] = memory_mb
        self._kinds[holder] = kind

    def _full(self, memory_mb: int, kind: _Kind) -> CapacityLimit | None:
        if kind == "execution" and self.executions >= self.max_executions:
            return "executions"
        if kind == "call" and self.calls >= self.max_calls:
            return "calls"
        if self.memory_mb + memory_mb > self.memory_budget_mb:
            return "memory"
        return None

    def _message(self, limit: CapacityLimit, memory_mb: int) -> str:
        waited = f"waited {self._wait_s:g} s"
        if limit == "executions":
            return (f"{self.executions} executions are running, the most this server runs at "
                    f"once; {waited} for one to end; retry later")
        if limit == "calls":
            return (f"{self.calls} calls (execs and file transfers) are at work in sandboxes, "
                    f"the most this server allows at once; {waited} for one to end; retry "
                    "later")
        return (f"the running sandboxes hold {self.memory_mb} of the {self.memory_budget_mb} "
                f"MiB this server gives sandboxes, and this one asks for {memory_mb} MiB; "
                f"{waited} for memory to be freed; retry later, or ask for less memory")
