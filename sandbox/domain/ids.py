"""Sandbox ids: random, all the same length, one pattern.

runsc matches container ids by prefix and accepts `.` and `..`; fixed-length lowercase hex ids
make every id unambiguous and safe on a command line and in a path.
"""

import re
import secrets

from sandbox.domain.errors import ContextNotFound, SandboxNotFound

ID_PATTERN = re.compile(r"\A[0-9a-f]{24}\Z")
# A code context's id names it within its sandbox only.
CONTEXT_ID_PATTERN = re.compile(r"\A[0-9a-f]{16}\Z")


def new_sandbox_id() -> str:
    return secrets.token_hex(12)


def checked_sandbox_id(value: str) -> str:
    """Return value if it is a well-formed id; any other string cannot name a sandbox."""
    if not ID_PATTERN.match(value):
        raise SandboxNotFound(f"no sandbox with id {value[:64]!r}")
    return value


def new_context_id() -> str:
    return secrets.token_hex(8)


def checked_context_id(value: str) -> str:
    if not CONTEXT_ID_PATTERN.match(value):
        raise ContextNotFound(f"no context with id {value[:64]!r}")
    return value
