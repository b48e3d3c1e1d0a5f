"""What every SandboxStore does, held to by the in-memory store, the SQLite one and the
PostgreSQL one."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contract.backends import BACKENDS, opened_backend
from sandbox.adapters import records
from sandbox.adapters.sqlite_store import SqliteSandboxStore
from sandbox.domain.errors import InvalidState
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.model import Language, Limits, Sandbox, SandboxKind, SandboxState
from sandbox.domain.ports import SandboxStore

pytestmark = pytest.mark.anyio

CREATED_AT = 1_700_000_000.25


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SandboxStore]:
    async with opened_backend(request, tmp_path) as backend:
        yield (await backend.instance()).store


def a_sandbox(**changes: object) -> Sandbox:
    """A record with every field set to something other than its default."""
    sandbox = Sandbox(
        sandbox_id=new_sandbox_id(), kind=SandboxKind.SESSION, state=SandboxState.SUSPENDED,
        language=Language.BASH,
        limits=Limits(timeout_s=12.5, memory_mb=256, cpus=0.5, pids=64, open_files=128,
                      file_size_mb=8, tmp_mb=16, output_bytes=4096),
        created_at=CREATED_AT, updated_at=CREATED_AT + 7.5, exit_code=137,
        reason="suspended after 60 s idle — ünïcode",
        env=(("A", "1"), ("B", "two words"), ("EMPTY", "")),
        package_dirs=("/var/lib/sandbox/packages/abc", "/var/lib/sandbox/packages/def"),
        idle_timeout_s=60.0, last_activity_at=CREATED_AT + 3, run_seconds=4.75,
        running_since=CREATED_AT + 1, checkpoint="/var/lib/sandbox/checkpoints/x",
        checkpoint_identity=(("rootfs", "sha256:0f"), ("runtime", "runsc 20240101")),
    )
    return dataclasses.replace(sandbox, **changes)  # type: ignore[arg-type]


BARE = {"language": None, "exit_code": None, "reason": "", "env": (), "package_dirs": (),
        "idle_timeout_s": None, "running_since": None, "checkpoint": None,
        "checkpoint_identity": ()}


@pytest.mark.parametrize("changes", [{}, BARE], ids=["every-field-set", "empty-and-none"])
async def test_a_record_comes_back_exactly_as_it_was_added(
    store: SandboxStore, changes: dict[str, object]
) -> None:
    sandbox = a_sandbox(**changes)

    await store.add(sandbox)

    assert await store.get(sandbox.sandbox_id) == sandbox


async def test_an_unknown_id_has_no_record(store: SandboxStore) -> None:
    await store.add(a_sandbox())

    assert await store.get(new_sandbox_id()) is None


async def test_save_replaces_the_record(store: SandboxStore) -> None:
    sandbox = a_sandbox(state=SandboxState.RUNNING, checkpoint=None)
    await store.add(sandbox)
    changed = dataclasses.replace(sandbox, state=SandboxState.EXITED, exit_code=0,
                                  reason="exited with code 0", updated_at=CREATED_AT + 99)

    await store.save(changed)

    assert await store.get(sandbox.sandbox_id) == changed


async def test_save_of_an_unknown_id_adds_nothing(store: SandboxStore) -> None:
    sandbox = a_sandbox()

    await store.save(sandbox)

    assert await store.get(sandbox.sandbox_id) is None
    assert await store.list() == []


async def test_adding_an_id_twice_is_refused_and_keeps_the_first(store: SandboxStore) -> None:
    first = a_sandbox()
    await store.add(first)

    with pytest.raises(InvalidState):
        await store.add(dataclasses.replace(first, reason="second"))

    assert await store.get(first.sandbox_id) == first


async def test_remove_forgets_the_record_and_is_idempotent(store: SandboxStore) -> None:
    sandbox = a_sandbox()
    await store.add(sandbox)

    await store.remove(sandbox.sandbox_id)
    await store.remove(sandbox.sandbox_id)

    assert await store.get(sandbox.sandbox_id) is None
    assert await store.list() == []


async def test_the_list_is_in_order_of_creation(store: SandboxStore) -> None:
    later, earliest, middle = (a_sandbox(created_at=CREATED_AT + offset) for offset in (2, 0, 1))
    for sandbox in (later, earliest, middle):
        await store.add(sandbox)

    listed = await store.list()

    assert listed == [earliest, middle, later]


async def test_the_list_filters_by_state_as_last_saved(store: SandboxStore) -> None:
    running = a_sandbox(state=SandboxState.RUNNING, created_at=CREATED_AT)
    exited = a_sandbox(state=SandboxState.EXITED, created_at=CREATED_AT + 1)
    becomes_exited = a_sandbox(state=SandboxState.RUNNING, created_at=CREATED_AT + 2)
    for sandbox in (running, exited, becomes_exited):
        await store.add(sandbox)
    now_exited = dataclasses.replace(becomes_exited, state=SandboxState.EXITED)
    await store.save(now_exited)

    assert await store.list(SandboxState.RUNNING) == [running]
    assert await store.list(SandboxState.EXITED) == [exited, now_exited]
    assert await store.list(SandboxState.FAILED) == []


# SQLite only ------------------------------------------------------------------------------


async def test_sqlite_records_survive_closing_and_reopening_the_file(tmp_path: Path) -> None:
    first = SqliteSandboxStore(tmp_path / "s.db")
    kept, removed = a_sandbox(), a_sandbox(created_at=CREATED_AT + 1)
    await first.add(kept)
    await first.add(removed)
    await first.remove(removed.sandbox_id)
    first.close()

    reopened = SqliteSandboxStore(tmp_path / "s.db")
    try:
        assert await reopened.list() == [kept]
    finally:
        reopened.close()


async def test_sqlite_makes_its_folder(tmp_path: Path) -> None:
    store = SqliteSandboxStore(tmp_path / "state" / "deeper" / "s.db")
    try:
        await store.add(a_sandbox())
    finally:
        store.close()

    assert (tmp_path / "state" / "deeper" / "s.db").exists()


async def test_sqlite_writes_are_visible_to_another_connection_without_a_close(
    tmp_path: Path,
) -> None:
    """As after a crash: what another process finds is every write so far, whole."""
    store = SqliteSandboxStore(tmp_path / "s.db")
    written = [a_sandbox(created_at=CREATED_AT + n) for n in range(20)]
    for sandbox in written:
        await store.add(sandbox)
    await store.save(dataclasses.replace(written[3], reason="saved last"))

    other = sqlite3.connect(tmp_path / "s.db")
    try:
        journal_mode = other.execute("PRAGMA journal_mode").fetchone()[0]
        integrity = other.execute("PRAGMA integrity_check").fetchone()[0]
        rows = other.execute("SELECT sandbox_id, state, record FROM sandboxes "
                             "ORDER BY created_at").fetchall()
    finally:
        other.close()
        store.close()

    assert (journal_mode, integrity) == ("wal", "ok")
    found = [records.load(record) for _, _, record in rows]
    assert found == [dataclasses.replace(written[3], reason="saved last") if n == 3 else sandbox
                     for n, sandbox in enumerate(written)]
    assert all(sandbox_id == sandbox.sandbox_id and state == sandbox.state.value
               for (sandbox_id, state, _), sandbox in zip(rows, found, strict=True))
