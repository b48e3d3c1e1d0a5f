"""`SqliteSandboxStore`: the embedded default store, one file under the state folder.

WAL journaling with synchronous=FULL: each write is one statement in its own transaction, so
a crash at any moment leaves every record as it was or as it was written.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from sandbox.adapters import records
from sandbox.adapters.private import create_private_file, private_files, private_folder
from sandbox.domain.errors import InvalidState
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.ports import SandboxStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    sandbox_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    record TEXT NOT NULL
)
"""


def _companions(path: Path) -> list[Path]:
    return [path.with_name(f"{path.name}-{suffix}") for suffix in ("wal", "shm", "journal")]


class SqliteSandboxStore(SandboxStore):
    def __init__(self, path: Path) -> None:
        # Records hold sessions' env values, often secrets. SQLite gives the -wal and -shm
        # files the database's own mode; those left by an older start are tightened here.
        private_folder(path.parent)
        create_private_file(path)
        private_files(*_companions(path))
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._mutex = threading.Lock()

    def close(self) -> None:
        with self._mutex:
            self._db.close()

    async def _run(self, sql: str, *args: object) -> list[tuple[str]]:
        def work() -> list[tuple[str]]:
            with self._mutex:
                return self._db.execute(sql, args).fetchall()

        return await asyncio.to_thread(work)

    async def add(self, sandbox: Sandbox) -> None:
        try:
            await self._run(
                "INSERT INTO sandboxes (sandbox_id, state, created_at, record) "
                "VALUES (?, ?, ?, ?)",
                sandbox.sandbox_id, sandbox.state.value, sandbox.created_at,
                records.dump(sandbox),
            )
        except sqlite3.IntegrityError as error:
            raise InvalidState(f"sandbox {sandbox.sandbox_id} exists already") from error

    async def save(self, sandbox: Sandbox) -> None:
        await self._run(
            "UPDATE sandboxes SET state = ?, record = ? WHERE sandbox_id = ?",
            sandbox.state.value, records.dump(sandbox), sandbox.sandbox_id,
        )

    async def get(self, sandbox_id: str) -> Sandbox | None:
        rows = await self._run("SELECT record FROM sandboxes WHERE sandbox_id = ?", sandbox_id)
        return records.load(rows[0][0]) if rows else None

    async def remove(self, sandbox_id: str) -> None:
        await self._run("DELETE FROM sandboxes WHERE sandbox_id = ?", sandbox_id)

    async def list(self, state: SandboxState | None = None) -> list[Sandbox]:
        if state is None:
            rows = await self._run("SELECT record FROM sandboxes ORDER BY created_at")
        else:
            rows = await self._run(
                "SELECT record FROM sandboxes WHERE state = ? ORDER BY created_at", state.value
            )
        return [records.load(row[0]) for row in rows]
