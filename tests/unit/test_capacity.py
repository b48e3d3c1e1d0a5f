from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import AtCapacity, InvalidRequest
from sandbox.domain.metrics import CapacityLimit, NoMetrics

pytestmark = pytest.mark.anyio

SHORT_WAIT_S = 0.05


class CountingMetrics(NoMetrics):
    def __init__(self) -> None:
        self.rejected: list[CapacityLimit] = []

    def capacity_rejected(self, limit: CapacityLimit) -> None:
        self.rejected.append(limit)


async def started(capacity: Capacity, memory_mb: int) -> tuple[asyncio.Task[None], asyncio.Event]:
    """An execution that holds its place until the returned event is set."""
    admitted, done = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with capacity.execution(memory_mb):
            admitted.set()
            await done.wait()

    task = asyncio.create_task(run())
    await admitted.wait()
    return task, done


async def test_executions_beyond_the_limit_are_refused_after_the_bounded_wait() -> None:
    metrics = CountingMetrics()
    capacity = Capacity(max_executions=1, memory_budget_mb=1000, wait_s=SHORT_WAIT_S,
                        metrics=metrics)
    holder, done = await started(capacity, 100)

    with capture_logs() as logs, pytest.raises(AtCapacity) as refused:
        async with capacity.execution(100):
            pytest.fail("admitted over the limit")

    assert refused.value.retry_after_s >= 1
    assert "executions" in refused.value.message
    assert metrics.rejected == ["executions"]
    assert [(entry["event"], entry["limit"]) for entry in logs] == [
        ("capacity.rejected", "executions")
    ]
    done.set()
    await holder


async def test_a_waiting_execution_goes_ahead_when_a_place_is_freed() -> None:
    capacity = Capacity(max_executions=1, memory_budget_mb=1000, wait_s=60)
    holder, done = await started(capacity, 100)

    async def second() -> str:
        async with capacity.execution(100):
            return "ran"

    waiting = asyncio.create_task(second())
    await asyncio.sleep(0)
    assert not waiting.done()

    done.set()
    await holder

    assert await waiting == "ran"
    assert (capacity.executions, capacity.memory_mb) == (0, 0)


async def test_memory_beyond_the_budget_is_refused_and_named() -> None:
    metrics = CountingMetrics()
    capacity = Capacity(max_executions=10, memory_budget_mb=1000, wait_s=SHORT_WAIT_S,
                        metrics=metrics)
    await capacity.reserve("managed", 600)

    with pytest.raises(AtCapacity) as refused:
        async with capacity.execution(500):
            pytest.fail("admitted over the memory budget")

    assert "600 of the 1000 MiB" in refused.value.message
    assert metrics.rejected == ["memory"]


async def test_released_memory_admits_the_next_sandbox() -> None:
    capacity = Capacity(max_executions=10, memory_budget_mb=1000, wait_s=SHORT_WAIT_S)
    await capacity.reserve("first", 600)
    capacity.release("first")

    await capacity.reserve("second", 600)

    assert capacity.memory_mb == 600


async def test_one_sandbox_larger_than_the_whole_budget_is_a_bad_request() -> None:
    capacity = Capacity(max_executions=10, memory_budget_mb=1000, wait_s=60)

    with pytest.raises(InvalidRequest, match="1000 MiB"):
        await capacity.reserve("huge", 1001)


async def test_a_place_is_released_when_the_execution_fails() -> None:
    capacity = Capacity(max_executions=1, memory_budget_mb=1000, wait_s=SHORT_WAIT_S)

    with pytest.raises(RuntimeError):
        async with capacity.execution(100):
            raise RuntimeError("the runtime broke")

    assert (capacity.executions, capacity.memory_mb) == (0, 0)


async def test_a_place_is_released_when_the_execution_is_cancelled() -> None:
    capacity = Capacity(max_executions=1, memory_budget_mb=1000, wait_s=SHORT_WAIT_S)
    holder, _ = await started(capacity, 100)

    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)

    assert (capacity.executions, capacity.memory_mb) == (0, 0)


async def test_a_cancelled_waiter_holds_nothing() -> None:
    capacity = Capacity(max_executions=1, memory_budget_mb=1000, wait_s=60)
    holder, done = await started(capacity, 100)

    async def second() -> None:
        async with capacity.execution(100):
            pytest.fail("admitted over the limit")

    waiting = asyncio.create_task(second())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    done.set()
    await holder

    assert (capacity.executions, capacity.memory_mb) == (0, 0)


async def test_releasing_twice_or_reserving_again_never_counts_twice() -> None:
    capacity = Capacity(max_executions=1, memory_budget_mb=1000, wait_s=SHORT_WAIT_S)
    await capacity.reserve("managed", 300)
    await capacity.reserve("managed", 400)

    assert capacity.memory_mb == 400

    capacity.release("managed")
    capacity.release("managed")

    assert capacity.memory_mb == 0


async def test_no_wait_refuses_at_once() -> None:
    capacity = Capacity(max_executions=1, memory_budget_mb=1000, wait_s=0)
    holder, done = await started(capacity, 100)

    with pytest.raises(AtCapacity) as refused:
        async with capacity.execution(100):
            pytest.fail("admitted over the limit")

    assert refused.value.retry_after_s == 1
    done.set()
    await holder


# Calls in running sandboxes -----------------------------------------------------------------


async def held_call(capacity: Capacity) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A call that holds its place until the returned event is set."""
    admitted, done = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with capacity.call():
            admitted.set()
            await done.wait()

    task = asyncio.create_task(run())
    await admitted.wait()
    return task, done


async def test_calls_beyond_the_limit_are_refused_after_the_bounded_wait() -> None:
    metrics = CountingMetrics()
    capacity = Capacity(max_executions=1, memory_budget_mb=1000, wait_s=SHORT_WAIT_S,
                        metrics=metrics, max_calls=2)
    holders = [await held_call(capacity) for _ in range(2)]

    with pytest.raises(AtCapacity) as refused:
        async with capacity.call():
            pytest.fail("admitted over the limit")

    assert refused.value.retry_after_s >= 1
    assert "2 calls (execs and file transfers)" in refused.value.message
    assert metrics.rejected == ["calls"]
    for task, done in holders:
        done.set()
        await task
    assert capacity.calls == 0


async def test_a_waiting_call_goes_ahead_when_a_call_ends() -> None:
    capacity = Capacity(max_executions=1, memory_budget_mb=1000, wait_s=60, max_calls=1)
    holder, done = await held_call(capacity)

    async def second() -> str:
        async with capacity.call():
            return "ran"

    waiting = asyncio.create_task(second())
    await asyncio.sleep(0)
    assert not waiting.done()

    done.set()
    await holder

    assert await waiting == "ran"
    assert capacity.calls == 0


async def test_calls_hold_no_memory_and_are_counted_apart_from_executions() -> None:
    capacity = Capacity(max_executions=1, memory_budget_mb=100, wait_s=0, max_calls=1)
    execution, execution_done = await started(capacity, 100)

    call, call_done = await held_call(capacity)

    assert (capacity.executions, capacity.calls, capacity.memory_mb) == (1, 1, 100)
    for task, done in ((execution, execution_done), (call, call_done)):
        done.set()
        await task


async def test_a_place_is_released_however_the_call_ends() -> None:
    capacity = Capacity(max_executions=1, memory_budget_mb=1000, wait_s=0, max_calls=1)
    cancelled, _ = await held_call(capacity)

    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    with pytest.raises(RuntimeError):
        async with capacity.call():
            raise RuntimeError("the runtime broke")

    assert capacity.calls == 0
async def test_memory_held_ahead_of_demand_is_taken_only_when_free() -> None:
    capacity = Capacity(max_executions=4, memory_budget_mb=1000, wait_s=SHORT_WAIT_S)

    taken = [capacity.try_reserve(f"pooled-{index}", 400) for index in range(3)]

    assert taken == [True, True, False]
    assert capacity.memory_mb == 800


async def test_memory_held_ahead_of_demand_gives_way_to_a_request_waiting_for_memory() -> None:
    capacity = Capacity(max_executions=4, memory_budget_mb=1000, wait_s=60)
    holder, done = await started(capacity, 800)
    waiting = asyncio.create_task(capacity.reserve("session", 500))
    await asyncio.sleep(0.01)

    taken_while_waiting = capacity.try_reserve("pooled", 100)
    done.set()
    await holder
    await waiting

    assert taken_while_waiting is False
    assert capacity.memory_mb == 500


async def test_an_admission_short_of_memory_asks_for_the_shortfall_to_be_reclaimed() -> None:
    capacity = Capacity(max_executions=4, memory_budget_mb=1000, wait_s=60)
    assert capacity.try_reserve("pooled", 700)
    asked: list[int] = []

    def reclaim(shortfall_mb: int) -> None:
        asked.append(shortfall_mb)
        asyncio.get_running_loop().call_soon(capacity.release, "pooled")

    capacity.reclaim_with(reclaim)
    async with capacity.execution(600):
        admitted_with = capacity.memory_mb

    assert asked == [300]
    assert admitted_with == 600
