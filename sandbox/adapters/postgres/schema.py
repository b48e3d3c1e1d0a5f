"""The PostgreSQL schema, as numbered migrations (see sandbox/adapters/migrations.py)."""

from __future__ import annotations

from sandbox.adapters.migrations import Migration, checked_sequence

MIGRATIONS = checked_sequence((
    # Records are the JSON of sandbox/adapters/records.py, kept as text (jsonb would refuse
    # an escaped NUL); state and created_at are columns because lists filter and sort by them.
    Migration(1, "sandboxes", (
        """
CREATE TABLE sandboxes (
    sandbox_id text PRIMARY KEY,
    state text NOT NULL,
    created_at double precision NOT NULL,
    record text NOT NULL
)
""",
        "CREATE INDEX sandboxes_by_created ON sandboxes (created_at)",
        "CREATE INDEX sandboxes_by_state ON sandboxes (state, created_at)",
    )),
    # One sequence for every lease: a token is never given twice, even after a lease row is
    # deleted and made again.
    Migration(2, "leases", (
        "CREATE SEQUENCE lease_tokens AS bigint",
        """
CREATE TABLE leases (
    sandbox_id text PRIMARY KEY,
    owner text NOT NULL,
    token bigint NOT NULL,
    expires_at timestamptz NOT NULL
)
""",
        "CREATE INDEX leases_by_expiry ON leases (expires_at)",
    )),
    Migration(3, "handoff requests", ("""
CREATE TABLE handoff_requests (
    sandbox_id text PRIMARY KEY,
    requester text NOT NULL,
    requested_at timestamptz NOT NULL,
    state text NOT NULL
)
""",)),
    # Detached output: chunks by their offset in the stream, and per stream its size, the
    # truncation flag, and how much of the last write was kept (so one statement can both
    # grow the stream under its row lock and store the part of the write that fits).
    Migration(4, "output", (
        """
CREATE TABLE output_streams (
    sandbox_id text NOT NULL,
    stream text NOT NULL,
    size bigint NOT NULL,
    truncated boolean NOT NULL,
    last_kept bigint NOT NULL,
    PRIMARY KEY (sandbox_id, stream)
)
""",
        """
CREATE TABLE output_chunks (
    sandbox_id text NOT NULL,
    stream text NOT NULL,
    start bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (sandbox_id, stream, start)
)
""",
    )),
    # Template records as JSON (see sandbox/adapters/records.py), listed oldest first.
    Migration(5, "templates", ("""
CREATE TABLE templates (
    template_id text PRIMARY KEY,
    created_at double precision NOT NULL,
    record text NOT NULL
)
""",)),
))
