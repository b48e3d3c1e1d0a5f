"""The signal channels instances wake each other on; each payload is a sandbox id. Signals
may be lost: every reader also polls the durable rows they point at."""

# To the owner of a running sandbox: a call elsewhere needs it (a handoff request row).
HANDOFF = "sandbox_handoff"
# From that owner: it has checkpointed the sandbox and let go of its lease.
RELEASED = "sandbox_released"
# To the owner of a running sandbox: its record was deleted elsewhere; end it.
DELETED = "sandbox_deleted"
