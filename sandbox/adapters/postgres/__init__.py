"""Shared state on PostgreSQL, for several instances: records, leases, handoff requests,
detached output (in the database) and signals (LISTEN/NOTIFY)."""
