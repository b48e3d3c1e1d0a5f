"""The SQLite schema, as numbered migrations (see migrations.py). Migration 1 is the schema
the first releases made without a migrations table: on such a database it changes nothing
and is recorded, so old state folders upgrade in place."""

from __future__ import annotations

from sandbox.adapters.migrations import Migration, checked_sequence

MIGRATIONS = checked_sequence((
    Migration(1, "sandboxes", ("""
CREATE TABLE IF NOT EXISTS sandboxes (
    sandbox_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    record TEXT NOT NULL
)
""",)),
    Migration(2, "sandboxes by state and creation", (
        "CREATE INDEX sandboxes_by_created ON sandboxes (created_at)",
        "CREATE INDEX sandboxes_by_state ON sandboxes (state, created_at)",
    )),
    # Tokens come from one counter that only grows, so no token is ever given twice, even
    # after a lease row is deleted and made again.
    Migration(3, "leases", (
        "CREATE TABLE lease_tokens (id INTEGER PRIMARY KEY CHECK (id = 1), "
        "last INTEGER NOT NULL)",
        "INSERT INTO lease_tokens (id, last) VALUES (1, 0)",
        """
CREATE TABLE leases (
    sandbox_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at REAL NOT NULL
)
""",
        "CREATE INDEX leases_by_expiry ON leases (expires_at)",
    )),
    Migration(4, "handoff requests", ("""
CREATE TABLE handoff_requests (
    sandbox_id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    requested_at REAL NOT NULL,
    state TEXT NOT NULL
)
""",)),
    # Template records as JSON (see records.py), listed oldest first.
    Migration(5, "templates", ("""
CREATE TABLE templates (
    template_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    record TEXT NOT NULL
)
""",)),
))
