"""Strict query parameters: an unknown, repeated or malformed one is a mistake worth a 400."""

from __future__ import annotations

from collections.abc import Collection

from starlette.datastructures import QueryParams

from sandbox.domain.errors import InvalidRequest


def checked_query(params: QueryParams, allowed: Collection[str]) -> dict[str, str]:
    """The parameters as a plain mapping, once none is unknown or given twice."""
    unknown = sorted(name[:40] for name in params if name not in allowed)
    if unknown:
        accepted = f"accepts {', '.join(allowed)}" if allowed else "takes no query parameters"
        raise InvalidRequest(
            f"unknown query parameter(s): {', '.join(unknown)}; this call {accepted}"
        )
    repeated = sorted(name for name in params if len(params.getlist(name)) > 1)
    if repeated:
        raise InvalidRequest(f"query parameter(s) given more than once: {', '.join(repeated)}")
    return dict(params)


def optional_float(query: dict[str, str], name: str, meaning: str) -> float | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number ({meaning}), not {raw[:40]!r}") from None


def optional_int(query: dict[str, str], name: str, meaning: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        message = f"{name} must be a whole number ({meaning}), not {raw[:40]!r}"
        raise InvalidRequest(message) from None


def flag(query: dict[str, str], name: str) -> bool:
    raw = query.get(name, "false")
    if raw not in ("true", "false"):
        raise InvalidRequest(f"{name} must be true or false, not {raw[:40]!r}")
    return raw == "true"
