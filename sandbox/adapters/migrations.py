"""Numbered schema migrations, one mechanism for SQLite and PostgreSQL.

Each database keeps a `schema_migrations` table: one row per applied migration (version,
name, checksum of its SQL). At start a store applies, in one transaction, the migrations the
database lacks, in order. It refuses to start against a database that holds a version this
code does not know (a newer release migrated it: running old code on it could lose data), or
whose applied migrations differ from this code's (someone edited an applied migration).
Applied migrations are never edited: a change is a new, higher number.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""

APPLIED = "SELECT version, checksum FROM schema_migrations"


class SchemaMismatch(RuntimeError):
    """The database's schema is not one this code can use; the message says what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]

    @property
    def checksum(self) -> str:
        return hashlib.sha256("\n;\n".join(self.statements).encode()).hexdigest()


def checked_sequence(migrations: Sequence[Migration]) -> Sequence[Migration]:
    """Migrations numbered 1, 2, 3... in order: a gap or a repeat is a mistake in the code."""
    versions = [migration.version for migration in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise ValueError(f"migrations must be numbered 1..n in order, not {versions}")
    return migrations


def pending(
    applied: Mapping[int, str], known: Sequence[Migration], where: str
) -> list[Migration]:
    """The migrations still to apply to a database holding `applied` (version -> checksum).
    `where` names the database in the messages (never with its password)."""
    latest = len(checked_sequence(known))
    newer = sorted(version for version in applied if version > latest)
    if newer:
        raise SchemaMismatch(
            f"{where} has schema version {newer[-1]}, newer than this code knows ({latest}): "
            "a newer release of the service migrated it. Run that release (or a later one), "
            "or point the service at another database"
        )
    for migration in known:
        checksum = applied.get(migration.version)
        if checksum is not None and checksum != migration.checksum:
            raise SchemaMismatch(
                f"{where}: migration {migration.version} ({migration.name}) was applied with "
                "other SQL than this code holds: applied migrations must never be edited"
            )
    skipped = [version for version in range(1, max(applied, default=0)) if version not in applied]
    if skipped:
        raise SchemaMismatch(f"{where} lacks migrations {skipped} below ones it has")
    return [migration for migration in known if migration.version not in applied]
