"""`PostgresTemplateStore`: template records every instance shares."""

from __future__ import annotations

import psycopg

from sandbox.adapters import records
from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.domain.errors import InvalidState
from sandbox.domain.model import Template
from sandbox.domain.ports import TemplateStore


class PostgresTemplateStore(TemplateStore):
    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database

    async def add(self, template: Template) -> None:
        try:
            await self._db.fetch(
                "INSERT INTO templates (template_id, created_at, record) "
                "VALUES (%(template_id)s, %(created_at)s, %(record)s)",
                {"template_id": template.template_id, "created_at": template.created_at,
                 "record": records.dump_template(template)},
            )
        except psycopg.errors.UniqueViolation as error:
            raise InvalidState(f"template {template.template_id} exists already") from error

    async def get(self, template_id: str) -> Template | None:
        rows = await self._db.fetch(
            "SELECT record FROM templates WHERE template_id = %(template_id)s",
            {"template_id": template_id},
        )
        return records.load_template(rows[0][0]) if rows else None

    async def remove(self, template_id: str) -> None:
        await self._db.fetch("DELETE FROM templates WHERE template_id = %(template_id)s",
                             {"template_id": template_id})

    async def list(self) -> list[Template]:
        rows = await self._db.fetch("SELECT record FROM templates ORDER BY created_at", {})
        return [records.load_template(row[0]) for row in rows]
