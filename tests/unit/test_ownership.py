"""Leases in the lifecycle: one owner per running sandbox, an owner that lost its lease writes
nothing and ends its container, the sandboxes of an instance that died are recorded lost
(the suspended ones stay restorable), and a start leaves other instances' sandboxes alone."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path

import pytest
from instances_support import Instance, instances, runtime_of, where_it_runs
from lifecycle_support import (
    LIMITS,
    ManualClock,
    NewSandboxes,
    policy,
    run_python,
    session,
    suspended_session,
)

from sandbox.adapters.memory_leases import InMemoryLeaseStore
from sandbox.adapters.memory_store import InMemorySandboxStore
from sandbox.domain.errors import InvalidState, LeaseLost, StoreUnavailable
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle.leases import renew_leases, sweep_expired
from sandbox.domain.lifecycle.reaping import collect_images
from sandbox.domain.lifecycle.reconciliation import reconcile
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import SharedState
from sandbox.domain.model import IDLE, SandboxSpec, SandboxState
from sandbox.domain.output import OutputCapture
from sandbox.domain.ports import Lease
from sandbox.domain.reasons import ReasonCode

pytestmark = pytest.mark.anyio

TTL_S = 30.0


@pytest.fixture
def leases(clock: ManualClock) -> InMemoryLeaseStore:
    """Leases by the hand-moved clock: tests make them expire by moving it."""
    return InMemoryLeaseStore(clock)


@pytest.fixture
def instance(new_sandboxes: NewSandboxes, shared: SharedState, tmp_path: Path) -> Instance:
    return instances(new_sandboxes, shared, tmp_path)


async def test_an_owner_fenced_out_writes_nothing_and_ends_its_container(
    instance: Instance, clock: ManualClock
) -> None:
    a, b = instance("a"), instance("b")
    sandbox = await session(a)
    runtime_of(a).hold_execs()
    working = asyncio.create_task(run_python(a, sandbox.sandbox_id, "print(1)"))
    await runtime_of(a).exec_entered.wait()
    clock.advance(TTL_S + 1)  # a was paused past its lease
    await sweep_expired(b)
    lost = await b.get(sandbox.sandbox_id)

    runtime_of(a).release_execs()
    await working  # its end touches the record: fenced, refused
    after = await b.get(sandbox.sandbox_id)

    assert (lost.state, lost.reason_code) == (SandboxState.EXITED, ReasonCode.LOST)
    assert after == lost
    assert where_it_runs(sandbox.sandbox_id, a, b) == []


async def test_an_owner_whose_lease_was_taken_ends_its_container_at_its_heartbeat(
    instance: Instance, clock: ManualClock
) -> None:
    a, b = instance("a"), instance("b")
    sandbox = await session(a)
    clock.advance(TTL_S + 1)
    await sweep_expired(b)
    lost = await b.get(sandbox.sandbox_id)

    await renew_leases(a)

    assert where_it_runs(sandbox.sandbox_id, a, b) == []
    assert await a.get(sandbox.sandbox_id) == lost
    with pytest.raises(InvalidState):
        await run_python(a, sandbox.sandbox_id, "print(1)")


class StoreDown(InMemoryLeaseStore):
    """Leases in a database that stops answering when told."""

    down = False

    async def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        if self.down:
            raise StoreUnavailable("the database does not answer")
        return await super().renew(lease, ttl_s)


async def test_an_instance_cut_off_from_the_store_ends_its_sandboxes_before_they_expire(
    new_sandboxes: NewSandboxes, shared: SharedState, clock: ManualClock
) -> None:
    leases = StoreDown(clock)
    store = InMemorySandboxStore(leases)
    a = new_sandboxes(policy(lease_ttl_s=0.3), store,
                      other_shared=dataclasses.replace(shared, leases=leases))
    sandbox = await session(a)
    leases.down = True

    await renew_leases(a)  # early: the database may come back in time
    kept = a.ownership.holds(sandbox.sandbox_id)
    await asyncio.sleep(0.25)  # past ttl - margin without a renewal
    await renew_leases(a)

    assert kept
    assert not a.ownership.holds(sandbox.sandbox_id)
    assert sandbox.sandbox_id not in runtime_of(a).live
    assert (await store.get(sandbox.sandbox_id)).state is SandboxState.RUNNING  # not written


async def test_the_sandboxes_of_an_instance_that_died_are_recorded_lost_once(
    instance: Instance, clock: ManualClock
) -> None:
    a, b, c = instance("a"), instance("b"), instance("c")
    running = await session(a)
    suspended = await suspended_session(a)
    clock.advance(TTL_S + 1)  # a died: nobody renews its leases

    await asyncio.gather(sweep_expired(b), sweep_expired(c))
    lost = await b.get(running.sandbox_id)

    assert (lost.state, lost.reason_code, lost.reason) == (
        SandboxState.EXITED, ReasonCode.LOST,
        "ended: the server running it stopped, and it was not saved")
    assert await b.ownership.leases.expired() == []
    assert (await b.get(suspended.sandbox_id)).state is SandboxState.SUSPENDED
    restored = await restore_sandbox(c, suspended.sandbox_id)
    assert restored.state is SandboxState.RUNNING


async def test_a_call_for_a_sandbox_whose_owner_died_finds_it_lost(
    instance: Instance, clock: ManualClock
) -> None:
    a, b = instance("a"), instance("b")
    sandbox = await session(a)
    clock.advance(TTL_S + 1)

    with pytest.raises(InvalidState, match="exited"):
        await run_python(b, sandbox.sandbox_id, "print(1)")

    assert (await b.get(sandbox.sandbox_id)).reason_code is ReasonCode.LOST


async def test_a_start_leaves_the_sandboxes_other_instances_run_alone(
    instance: Instance,
) -> None:
    a = instance("a")
    sandbox = await session(a)
    b = instance("b")
    stale = SandboxSpec(sandbox_id=sandbox.sandbox_id, limits=LIMITS)
    await runtime_of(b).launch(stale, IDLE, OutputCapture(1024))  # a copy b left, say

    await reconcile(b)

    assert where_it_runs(sandbox.sandbox_id, a, b) == ["container on a", "lease of a"]
    assert (await b.get(sandbox.sandbox_id)).state is SandboxState.RUNNING


async def test_a_fenced_write_refused_is_told_as_lease_lost(
    instance: Instance, clock: ManualClock
) -> None:
    a, b = instance("a"), instance("b")
    sandbox = await session(a)
    clock.advance(TTL_S + 1)
    await sweep_expired(b)

    with pytest.raises(LeaseLost):
        await a.touch(await a.get(sandbox.sandbox_id))

    assert not a.ownership.holds(sandbox.sandbox_id)


async def test_images_no_record_names_are_collected_once_old_and_the_others_kept(
    instance: Instance, tmp_path: Path
) -> None:
    a = instance("a")
    suspended = await suspended_session(a)
    orphan_folder = tmp_path / "orphan"
    orphan_folder.mkdir()
    (orphan_folder / "checkpoint.img").write_bytes(b"from a suspend whose record was lost")
    orphan = f"checkpoint-{new_sandbox_id()}-0000beef"
    await a.images.publish(orphan, str(orphan_folder), {"runtime": "fake"})
    young = f"checkpoint-{new_sandbox_id()}-0000cafe"
    await a.images.publish(young, str(orphan_folder), {"runtime": "fake"})
    then = time.time() - 7200
    for path in (a.images.root / orphan).iterdir():  # type: ignore[attr-defined]
        os.utime(path, (then, then))
    os.utime(a.images.root / orphan, (then, then))  # type: ignore[attr-defined]

    removed = await collect_images(a)

    assert removed == [orphan]
    assert {manifest.key for manifest in await a.images.published()} == {
        suspended.checkpoint, young}
