"""What every LeaseStore does, and how fenced writes of the SandboxStore beside it hold, in
memory, on SQLite and on PostgreSQL. Two instances over one database are two servers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contract.backends import BACKENDS, Backend, Instance, opened_backend
from contract.test_store_contract import a_sandbox
from sandbox.domain.errors import LeaseLost
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.model import SandboxState
from sandbox.domain.ports import Lease

pytestmark = pytest.mark.anyio

LONG_S = 60.0
# Short leases for the tests of expiry: the test sleeps past them (never a race with them).
SHORT_S = 0.1
PAST_SHORT_S = 0.25


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


async def acquired(instance: Instance, sandbox_id: str, owner: str, ttl_s: float) -> Lease:
    lease = await instance.leases.acquire(sandbox_id, owner, ttl_s)
    assert lease is not None, f"{owner} could not acquire {sandbox_id}"
    return lease


# Acquire, renew, release -------------------------------------------------------------------


async def test_a_free_sandbox_is_acquired_and_the_lease_is_current(one: Instance) -> None:
    sandbox_id = new_sandbox_id()

    lease = await acquired(one, sandbox_id, "a", LONG_S)

    assert (lease.sandbox_id, lease.owner) == (sandbox_id, "a")
    assert await one.leases.current(sandbox_id) == lease


async def test_a_live_lease_of_another_owner_stops_an_acquire(
    one: Instance, other: Instance
) -> None:
    sandbox_id = new_sandbox_id()
    held = await acquired(one, sandbox_id, "a", LONG_S)

    refused = await other.leases.acquire(sandbox_id, "b", LONG_S)

    assert refused is None
    assert await other.leases.current(sandbox_id) == held


async def test_an_expired_lease_is_taken_over_with_a_larger_token(
    one: Instance, other: Instance
) -> None:
    sandbox_id = new_sandbox_id()
    old = await acquired(one, sandbox_id, "a", SHORT_S)
    await asyncio.sleep(PAST_SHORT_S)

    new = await acquired(other, sandbox_id, "b", LONG_S)

    assert new.owner == "b"
    assert new.token > old.token
    assert await one.leases.current(sandbox_id) == new


async def test_each_acquire_is_a_new_tenure_even_by_the_same_owner(one: Instance) -> None:
    sandbox_id = new_sandbox_id()
    first = await acquired(one, sandbox_id, "a", LONG_S)

    second = await acquired(one, sandbox_id, "a", LONG_S)

    assert second.token > first.token
    assert await one.leases.renew(first, LONG_S) is None


async def test_tokens_only_grow_across_release_expiry_and_other_sandboxes(
    one: Instance, other: Instance
) -> None:
    sandbox_id = new_sandbox_id()
    tokens = []
    for instance, owner in ((one, "a"), (other, "b"), (one, "a")):
        lease = await acquired(instance, sandbox_id, owner, LONG_S)
        tokens.append(lease.token)
        await acquired(instance, new_sandbox_id(), owner, LONG_S)
        await instance.leases.release(lease)
    expiring = await acquired(other, sandbox_id, "b", SHORT_S)
    await asyncio.sleep(PAST_SHORT_S)
    taken_over = await acquired(one, sandbox_id, "a", LONG_S)

    tokens += [expiring.token, taken_over.token]
    assert tokens == sorted(set(tokens))


async def test_renew_extends_a_live_lease_and_keeps_its_token(one: Instance) -> None:
    # Long enough to be renewed before it ends on a busy machine; then slept past.
    lease = await acquired(one, new_sandbox_id(), "a", 0.5)

    renewed = await one.leases.renew(lease, LONG_S)
    await asyncio.sleep(0.7)

    assert renewed is not None
    assert (renewed.owner, renewed.token) == (lease.owner, lease.token)
    assert renewed.expires_at > lease.expires_at
    assert await one.leases.current(lease.sandbox_id) == renewed


async def test_an_expired_lease_cannot_be_renewed_even_if_no_one_took_it(
    one: Instance,
) -> None:
    lease = await acquired(one, new_sandbox_id(), "a", SHORT_S)
    await asyncio.sleep(PAST_SHORT_S)

    assert await one.leases.renew(lease, LONG_S) is None
    assert await one.leases.current(lease.sandbox_id) is None


async def test_release_frees_the_sandbox_for_another_owner(
    one: Instance, other: Instance
) -> None:
    lease = await acquired(one, new_sandbox_id(), "a", LONG_S)

    await one.leases.release(lease)
    await one.leases.release(lease)

    assert await one.leases.current(lease.sandbox_id) is None
    assert await one.leases.renew(lease, LONG_S) is None
    assert (await acquired(other, lease.sandbox_id, "b", LONG_S)).owner == "b"


async def test_releasing_a_stale_lease_leaves_the_new_owner_alone(
    one: Instance, other: Instance
) -> None:
    old = await acquired(one, new_sandbox_id(), "a", SHORT_S)
    await asyncio.sleep(PAST_SHORT_S)
    new = await acquired(other, old.sandbox_id, "b", LONG_S)

    await one.leases.release(old)

    assert await other.leases.current(old.sandbox_id) == new


async def test_expired_lists_the_leases_no_one_renewed_oldest_first(
    one: Instance, other: Instance
) -> None:
    first = await acquired(one, new_sandbox_id(), "a", SHORT_S)
    second = await acquired(one, new_sandbox_id(), "a", SHORT_S + 0.05)
    live = await acquired(other, new_sandbox_id(), "b", LONG_S)
    released = await acquired(other, new_sandbox_id(), "b", SHORT_S)
    await other.leases.release(released)
    await asyncio.sleep(PAST_SHORT_S)

    expired = await other.leases.expired()

    assert expired == [first, second]
    assert live not in expired


# Fenced writes -----------------------------------------------------------------------------


async def test_a_fenced_save_with_the_live_lease_is_written(one: Instance) -> None:
    sandbox = a_sandbox(state=SandboxState.RUNNING)
    await one.store.add(sandbox)
    lease = await acquired(one, sandbox.sandbox_id, "a", LONG_S)
    changed = dataclasses.replace(sandbox, state=SandboxState.SUSPENDED)

    await one.store.save(changed, fence=lease)

    assert await one.store.get(sandbox.sandbox_id) == changed


async def test_a_stale_owner_cannot_overwrite_what_the_new_owner_wrote(
    one: Instance, other: Instance
) -> None:
    """As an instance stopped (SIGSTOP) past its lease and then resumed."""
    sandbox = a_sandbox(state=SandboxState.RUNNING)
    await one.store.add(sandbox)
    stale = await acquired(one, sandbox.sandbox_id, "a", SHORT_S)
    await asyncio.sleep(PAST_SHORT_S)
    new = await acquired(other, sandbox.sandbox_id, "b", LONG_S)
    by_new_owner = dataclasses.replace(sandbox, reason="restored by b")
    await other.store.save(by_new_owner, fence=new)

    with pytest.raises(LeaseLost):
        await one.store.save(dataclasses.replace(sandbox, reason="stale a"), fence=stale)
    with pytest.raises(LeaseLost):
        await one.store.remove(sandbox.sandbox_id, fence=stale)

    assert await other.store.get(sandbox.sandbox_id) == by_new_owner


async def test_an_expired_lease_fences_out_its_owner_even_if_no_one_took_it(
    one: Instance,
) -> None:
    sandbox = a_sandbox()
    await one.store.add(sandbox)
    lease = await acquired(one, sandbox.sandbox_id, "a", SHORT_S)
    await asyncio.sleep(PAST_SHORT_S)

    with pytest.raises(LeaseLost):
        await one.store.save(dataclasses.replace(sandbox, reason="late"), fence=lease)

    assert await one.store.get(sandbox.sandbox_id) == sandbox


async def test_a_released_lease_fences_nothing(one: Instance) -> None:
    sandbox = a_sandbox()
    await one.store.add(sandbox)
    lease = await acquired(one, sandbox.sandbox_id, "a", LONG_S)
    await one.leases.release(lease)

    with pytest.raises(LeaseLost):
        await one.store.save(dataclasses.replace(sandbox, reason="late"), fence=lease)

    assert await one.store.get(sandbox.sandbox_id) == sandbox


async def test_a_fenced_remove_with_the_live_lease_forgets_the_record(one: Instance) -> None:
    sandbox = a_sandbox()
    await one.store.add(sandbox)
    lease = await acquired(one, sandbox.sandbox_id, "a", LONG_S)

    await one.store.remove(sandbox.sandbox_id, fence=lease)
    await one.store.remove(sandbox.sandbox_id, fence=lease)

    assert await one.store.get(sandbox.sandbox_id) is None


async def test_a_lease_cannot_fence_another_sandbox(one: Instance) -> None:
    sandbox = a_sandbox()
    await one.store.add(sandbox)
    lease = await acquired(one, new_sandbox_id(), "a", LONG_S)

    with pytest.raises(ValueError, match="cannot fence"):
        await one.store.save(sandbox, fence=lease)


# Races -------------------------------------------------------------------------------------


async def test_two_instances_racing_for_many_sandboxes_get_one_owner_each(
    one: Instance, other: Instance
) -> None:
    sandbox_ids = [new_sandbox_id() for _ in range(20)]

    results = await asyncio.gather(*(
        instance.leases.acquire(sandbox_id, owner, LONG_S)
        for sandbox_id in sandbox_ids for instance, owner in ((one, "a"), (other, "b"))
    ))

    for n, sandbox_id in enumerate(sandbox_ids):
        granted = [lease for lease in results[2 * n:2 * n + 2] if lease is not None]
        assert len(granted) == 1
        assert await one.leases.current(sandbox_id) == granted[0]
    tokens = [lease.token for lease in results if lease is not None]
    assert len(set(tokens)) == len(tokens)


async def test_fenced_counters_lose_no_update_when_instances_take_turns(
    one: Instance, other: Instance
) -> None:
    """Each round: acquire, read the count, save it plus one under the lease, release. Only
    mutual exclusion makes the final count the number of saves."""
    sandbox = a_sandbox(exit_code=0)
    await one.store.add(sandbox)
    saves = 0

    async def increment(instance: Instance, owner: str, rounds: int) -> None:
        nonlocal saves
        for _ in range(rounds):
            lease = None
            while lease is None:
                lease = await instance.leases.acquire(sandbox.sandbox_id, owner, LONG_S)
                await asyncio.sleep(0)
            current = await instance.store.get(sandbox.sandbox_id)
            assert current is not None and current.exit_code is not None
            await asyncio.sleep(0)
            await instance.store.save(
                dataclasses.replace(current, exit_code=current.exit_code + 1), fence=lease)
            saves += 1
            await instance.leases.release(lease)

    await asyncio.gather(increment(one, "a", 15), increment(other, "b", 15))

    final = await one.store.get(sandbox.sandbox_id)
    assert final is not None
    assert final.exit_code == saves == 30
