"""Environment variables a client gives a sandbox (at creation) or one exec."""

from __future__ import annotations

import re

from sandbox.domain.errors import InvalidRequest

ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_ENV = 64


def checked_env(given: dict[str, str]) -> tuple[tuple[str, str], ...]:
    if len(given) > MAX_ENV:
        raise InvalidRequest(f"env may hold at most {MAX_ENV} variables")
    for name in given:
        if not ENV_NAME.match(name):
            raise InvalidRequest(
                f"env name {name[:40]!r} must be letters, digits and underscores, "
                "not starting with a digit"
            )
    return tuple(sorted(given.items()))
