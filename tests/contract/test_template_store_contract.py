"""What every TemplateStore does, held to by the in-memory store, the SQLite one and the
PostgreSQL one: a record comes back exactly, ids are unique, the list is oldest first."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contract.backends import BACKENDS
from sandbox.adapters.memory_templates import InMemoryTemplateStore
from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.adapters.postgres.templates import PostgresTemplateStore
from sandbox.adapters.sqlite_db import SqliteDatabase
from sandbox.adapters.sqlite_templates import SqliteTemplateStore
from sandbox.domain.errors import InvalidState
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.model import Language, Limits, SandboxKind, Template
from sandbox.domain.ports import TemplateStore

pytestmark = pytest.mark.anyio

CREATED_AT = 1_700_000_000.25


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TemplateStore]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "memory":
            yield InMemoryTemplateStore()
        elif request.param == "sqlite":
            sqlite = SqliteDatabase(tmp_path / "sandboxes.db")
            stack.callback(sqlite.close)
            yield SqliteTemplateStore(sqlite)
        else:
            postgres = PostgresDatabase(request.getfixturevalue("postgres_url"), max_size=2)
            await postgres.start()
            stack.push_async_callback(postgres.close)
            yield PostgresTemplateStore(postgres)


def a_template(**changes: object) -> Template:
    """A record with every field set to something other than its default."""
    template = Template(
        template_id=new_sandbox_id(), source_sandbox_id=new_sandbox_id(),
        kind=SandboxKind.SESSION, language=Language.BASH,
        limits=Limits(timeout_s=12.5, memory_mb=256, cpus=0.5, pids=64, open_files=128,
                      file_size_mb=8, tmp_mb=16, output_bytes=4096),
        created_at=CREATED_AT, size_bytes=268_435_456,
        identity=(("agent", "0f1e"), ("rootfs", "sha256:0f"), ("runtime", "runsc")),
        env=(("A", "1"), ("B", "two words — ünïcode")), package_dirs=("/packages/abc",),
        network_allow=("pypi.org", "*.example.com:8443"), idle_timeout_s=60.0,
        run_seconds=4.75,
    )
    return dataclasses.replace(template, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("changes", [{}, {"language": None, "env": (), "package_dirs": (),
                                           "network_allow": (), "idle_timeout_s": None}],
                         ids=["every-field-set", "empty-and-none"])
async def test_a_template_comes_back_exactly_as_it_was_added(
    store: TemplateStore, changes: dict[str, object]
) -> None:
    template = a_template(**changes)

    await store.add(template)

    assert await store.get(template.template_id) == template


async def test_a_template_id_is_added_once(store: TemplateStore) -> None:
    template = a_template()
    await store.add(template)

    with pytest.raises(InvalidState):
        await store.add(dataclasses.replace(template, size_bytes=1))

    assert await store.get(template.template_id) == template


async def test_templates_are_listed_oldest_first_and_removed_idempotently(
    store: TemplateStore,
) -> None:
    newer, older = a_template(created_at=CREATED_AT + 10), a_template()
    await store.add(newer)
    await store.add(older)

    listed = await store.list()
    await store.remove(older.template_id)
    await store.remove(older.template_id)

    assert listed == [older, newer]
    assert await store.list() == [newer]
    assert await store.get(older.template_id) is None
