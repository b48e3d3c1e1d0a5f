"""Sandbox ids: random, all the same length, one pattern.

runsc matches container ids by prefix and accepts `.` and `..`; fixed-length lowercase hex ids
make every id unambiguous and safe on a command line and in a path.
"""

import re
import secrets

from sandbox.domain.errors import SandboxNotFound

ID_PATTERN = re.compile(r"\A[0-9a-f]{24}\Z")


def new_sandbox_id() -> str:
    return secrets.token_hex(12)


def checked_sandbox_id(value: str) -> str:
    """Return value if it is a well-formed id; any other string cannot name a sandbox."""
    if not ID_PATTERN.match(value):
        raise SandboxNotFound(f"no sandbox with id {value[:64]!r}")
    return value
