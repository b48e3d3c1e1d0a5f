"""`SqliteTemplateStore`: template records as JSON in the embedded SQLite database."""

from __future__ import annotations

import sqlite3

from sandbox.adapters import records
from sandbox.adapters.sqlite_db import SqliteDatabase
from sandbox.domain.errors import InvalidState
from sandbox.domain.model import Template
from sandbox.domain.ports import TemplateStore


class SqliteTemplateStore(TemplateStore):
    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def add(self, template: Template) -> None:
        try:
            await self._db.run(
                "INSERT INTO templates (template_id, created_at, record) VALUES (?, ?, ?)",
                template.template_id, template.created_at, records.dump_template(template),
            )
        except sqlite3.IntegrityError as error:
            raise InvalidState(f"template {template.template_id} exists already") from error

    async def get(self, template_id: str) -> Template | None:
        rows = await self._db.run("SELECT record FROM templates WHERE template_id = ?",
                                  template_id)
        return records.load_template(rows[0][0]) if rows else None

    async def remove(self, template_id: str) -> None:
        await self._db.run("DELETE FROM templates WHERE template_id = ?", template_id)

    async def list(self) -> list[Template]:
        rows = await self._db.run("SELECT record FROM templates ORDER BY created_at")
        return [records.load_template(row[0]) for row in rows]
