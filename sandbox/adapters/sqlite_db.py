"""`SqliteDatabase`: the embedded default database, one file under the state folder, shared by
the SQLite store, lease store and handoff requests of one instance.

WAL journaling with synchronous=FULL: each write is one transaction, so a crash at any moment
leaves every row as it was or as it was written. One connection, used by one thread at a
time; the schema is migrated when the database is opened.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sandbox.adapters import migrations
from sandbox.adapters.private import create_private_file, private_files, private_folder
from sandbox.adapters.sqlite_schema import MIGRATIONS

T = TypeVar("T")

# Seconds since the epoch by SQLite's clock, to the millisecond (julianday: any SQLite 3).
NOW = "((julianday('now') - 2440587.5) * 86400.0)"


class SqliteDatabase:
    def __init__(self, path: Path) -> None:
        # Records hold sessions' env values, often secrets. SQLite gives the -wal and -shm
        # files the database's own mode; those left by an older start are tightened here.
        private_folder(path.parent)
        create_private_file(path)
        private_files(*_companions(path))
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._mutex = threading.Lock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._transaction(self._migrate)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._mutex:
            self._db.close()

    async def run(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """One statement, atomic on its own (autocommit)."""

        def work() -> list[tuple[Any, ...]]:
            with self._mutex:
                return self._db.execute(sql, args).fetchall()

        return await asyncio.to_thread(work)

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Runs work in one write transaction (BEGIN IMMEDIATE), off the event loop."""
        return await asyncio.to_thread(self._transaction, work)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute(migrations.SCHEMA_TABLE)
        applied = dict(db.execute(migrations.APPLIED).fetchall())
        where = f"the SQLite database {self.path}"
        for migration in migrations.pending(applied, MIGRATIONS, where):
            for statement in migration.statements:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                "VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                (migration.version, migration.name, migration.checksum),
            )


def _companions(path: Path) -> list[Path]:
    return [path.with_name(f"{path.name}-{suffix}") for suffix in ("wal", "shm", "journal")]
