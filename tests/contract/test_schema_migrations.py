"""Migrations applied and checked at start, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import psycopg
import pytest

from sandbox.adapters import sqlite_db
from sandbox.adapters.migrations import Migration, SchemaMismatch
from sandbox.adapters.postgres import database as postgres_database
from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.adapters.postgres.schema import MIGRATIONS as POSTGRES_MIGRATIONS
from sandbox.adapters.sqlite_db import SqliteDatabase
from sandbox.adapters.sqlite_leases import SqliteLeaseStore
from sandbox.adapters.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from sandbox.adapters.sqlite_store import SqliteSandboxStore
from sandbox.domain.model import SandboxState

pytestmark = pytest.mark.anyio

# Made by SqliteSandboxStore as it was before migrations (commit 917d270), holding a
# suspended session and an exited script.
OLD_DATABASE = Path(__file__).parent.parent / "data" / "sandboxes-before-migrations.db"
FAILING = Migration(len(SQLITE_MIGRATIONS) + 1, "fails half way", (
    "CREATE TABLE made_before_the_failure (x INTEGER)",
    "THIS IS NOT SQL",
))
assert len(SQLITE_MIGRATIONS) == len(POSTGRES_MIGRATIONS)


def sqlite_versions(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()


def sqlite_tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


# SQLite ------------------------------------------------------------------------------------


async def test_a_state_folder_from_before_migrations_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "sandboxes.db"
    shutil.copy(OLD_DATABASE, path)

    database = SqliteDatabase(path)
    try:
        store, leases = SqliteSandboxStore(database), SqliteLeaseStore(database)
        listed = await store.list()
        suspended = await store.list(SandboxState.SUSPENDED)
        lease = await leases.acquire(listed[0].sandbox_id, "a", 60)
    finally:
        database.close()

    assert [(s.sandbox_id, s.state) for s in listed] == [
        ("0123456789abcdef01234567", SandboxState.SUSPENDED),
        ("fedcba9876543210fedcba98", SandboxState.EXITED),
    ]
    assert suspended[0].checkpoint_identity == (("rootfs", "sha256:0f"),
                                                ("runtime", "runsc 20240729"))
    assert lease is not None
    assert sqlite_versions(path) == [(m.version, m.name) for m in SQLITE_MIGRATIONS]


async def test_opening_a_migrated_sqlite_database_again_applies_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sandboxes.db"
    SqliteDatabase(path).close()
    with sqlite3.connect(path) as db:
        first = db.execute("SELECT * FROM schema_migrations").fetchall()

    SqliteDatabase(path).close()

    with sqlite3.connect(path) as db:
        assert db.execute("SELECT * FROM schema_migrations").fetchall() == first


def test_a_sqlite_database_newer_than_the_code_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "sandboxes.db"
    SqliteDatabase(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x', 'later')")

    with pytest.raises(SchemaMismatch, match=rf"SQLite database {path} has schema version 99"):
        SqliteSandboxStore(path)


def test_a_failed_sqlite_migration_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sandboxes.db"
    shutil.copy(OLD_DATABASE, path)
    monkeypatch.setattr(sqlite_db, "MIGRATIONS", (*SQLITE_MIGRATIONS, FAILING))

    with pytest.raises(sqlite3.OperationalError):
        SqliteDatabase(path)

    assert sqlite_tables(path) == {"sandboxes"}


# PostgreSQL --------------------------------------------------------------------------------


async def postgres_versions(url: str) -> list[tuple[int, str]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1")
        return await cursor.fetchall()


@pytest.mark.postgres
async def test_instances_starting_together_migrate_a_new_database_once(
    postgres_url: str,
) -> None:
    databases = [PostgresDatabase(postgres_url) for _ in range(4)]
    try:
        await asyncio.gather(*(database.start() for database in databases))
    finally:
        await asyncio.gather(*(database.close() for database in databases))

    expected = [(m.version, m.name) for m in POSTGRES_MIGRATIONS]
    assert await postgres_versions(postgres_url) == expected


@pytest.mark.postgres
async def test_a_postgres_database_newer_than_the_code_refuses_to_start(
    postgres_url: str,
) -> None:
    first = PostgresDatabase(postgres_url)
    await first.start()
    await first.close()
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x', 'later')")
    later = PostgresDatabase(postgres_url)

    try:
        with pytest.raises(SchemaMismatch, match=r"PostgreSQL database test_\w+ on "
                                                 r"\S+ has schema version 99, newer than"):
            await later.start()
    finally:
        await later.close()


@pytest.mark.postgres
async def test_a_failed_postgres_migration_leaves_the_database_as_it_was(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_database, "MIGRATIONS", (*POSTGRES_MIGRATIONS, FAILING))
    database = PostgresDatabase(postgres_url)

    try:
        with pytest.raises(psycopg.errors.SyntaxError):
            await database.start()
    finally:
        await database.close()

    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert await cursor.fetchone() == (0,)
