"""What every HandoffRequests does, in memory, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contract.backends import BACKENDS, Backend, Instance, opened_backend
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.ports import HandoffState

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with opened_backend(request, tmp_path) as opened:
        yield opened


@pytest.fixture
async def one(backend: Backend) -> Instance:
    return await backend.instance()


@pytest.fixture
async def other(backend: Backend) -> Instance:
    return await backend.instance()


async def test_a_request_is_recorded_and_pending(one: Instance, other: Instance) -> None:
    sandbox_id = new_sandbox_id()

    made = await one.handoffs.request(sandbox_id, "b")

    assert (made.sandbox_id, made.requester, made.state) == (sandbox_id, "b",
                                                             HandoffState.REQUESTED)
    assert await other.handoffs.get(sandbox_id) == made
    assert await other.handoffs.pending() == [made]


async def test_a_second_requester_gets_the_first_request_back(
    one: Instance, other: Instance
) -> None:
    sandbox_id = new_sandbox_id()
    first = await one.handoffs.request(sandbox_id, "b")

    second = await other.handoffs.request(sandbox_id, "c")

    assert second == first


async def test_requesters_racing_agree_on_one_request(one: Instance, other: Instance) -> None:
    sandbox_ids = [new_sandbox_id() for _ in range(10)]

    answers = await asyncio.gather(*(
        instance.handoffs.request(sandbox_id, requester)
        for sandbox_id in sandbox_ids
        for instance, requester in ((one, "b"), (other, "c"), (one, "d"))
    ))

    for n, sandbox_id in enumerate(sandbox_ids):
        assert len(set(answers[3 * n:3 * n + 3])) == 1
        assert await one.handoffs.get(sandbox_id) == answers[3 * n]


async def test_only_the_requester_moves_or_removes_its_request(
    one: Instance, other: Instance
) -> None:
    sandbox_id = new_sandbox_id()
    await one.handoffs.request(sandbox_id, "b")

    refused = await other.handoffs.mark(sandbox_id, "c", HandoffState.RELEASED)
    await other.handoffs.remove(sandbox_id, "c")
    moved = await other.handoffs.mark(sandbox_id, "b", HandoffState.RELEASED)

    assert (refused, moved) == (False, True)
    released = await one.handoffs.get(sandbox_id)
    assert released is not None and released.state is HandoffState.RELEASED
    assert await one.handoffs.pending() == []


async def test_marking_a_sandbox_without_a_request_changes_nothing(one: Instance) -> None:
    assert await one.handoffs.mark(new_sandbox_id(), "b", HandoffState.RELEASED) is False
    assert await one.handoffs.pending() == []


async def test_a_removed_request_makes_room_for_a_new_one(
    one: Instance, other: Instance
) -> None:
    sandbox_id = new_sandbox_id()
    await one.handoffs.request(sandbox_id, "b")

    await one.handoffs.remove(sandbox_id, "b")
    again = await other.handoffs.request(sandbox_id, "c")

    assert await one.handoffs.get(sandbox_id) == again
    assert again.requester == "c"


async def test_pending_lists_requests_oldest_first(one: Instance) -> None:
    made = []
    for _ in range(3):
        made.append(await one.handoffs.request(new_sandbox_id(), "b"))
        await asyncio.sleep(0.01)

    assert await one.handoffs.pending() == made
