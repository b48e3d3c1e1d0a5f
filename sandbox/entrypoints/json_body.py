"""Strict JSON request bodies: one object, known fields, each of the type the call expects.

JSON `null` counts as a field not given. Every mistake is an `InvalidRequest` naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from typing import Any

from starlette.requests import Request

from sandbox.domain.errors import InvalidRequest
from sandbox.entrypoints.body import read_capped_body


def is_json(request: Request) -> bool:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def read_json_fields(
    request: Request, limit: int, allowed: Collection[str], empty_ok: bool = False
) -> JsonFields:
    body = await read_capped_body(request, limit)
    if empty_ok and not body.strip():
        return JsonFields({}, allowed)
    return JsonFields(parse_object(body), allowed)


def parse_object(body: bytes) -> dict[str, Any]:
    try:
        # JSON over a network is UTF-8 (RFC 8259); json.loads would also guess UTF-16 or -32.
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not valid JSON: it is not UTF-8 text") from None
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:  # RecursionError: absurdly deep nesting
        raise InvalidRequest(f"the body is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    for name, _ in pairs:
        # An escaped lone surrogate ("\\ud800") is valid JSON but no text: not a field name.
        checked_text("a field name", name)
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("a field is given more than once")
    return data


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


class JsonFields:
    def __init__(self, data: dict[str, Any], allowed: Collection[str]) -> None:
        unknown = sorted(name[:40] for name in data if name not in allowed)
        if unknown:
            raise InvalidRequest(
                f"unknown field(s): {', '.join(unknown)}; this call accepts {', '.join(allowed)}"
            )
        self._data = {name: value for name, value in data.items() if value is not None}

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def text(self, name: str, nul_ok: bool = True) -> str | None:
        value = self._data.get(name)
        return None if value is None else checked_text(name, value, nul_ok)

    def number(self, name: str) -> float | None:
        value = self._data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"{name} must be a number")
        if not math.isfinite(value):
            raise InvalidRequest(f"{name} must be a finite number")
        return float(value)

    def integer(self, name: str) -> int | None:
        value = self._data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"{name} must be a whole number")
        return int(value)

    def texts(self, name: str) -> list[str] | None:
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise InvalidRequest(f"{name} must be a list of strings")
        return [checked_text(f"{name}[{index}]", item, nul_ok=False)
                for index, item in enumerate(value)]

    def fields(self, name: str, allowed: Collection[str]) -> JsonFields | None:
        """A nested object, held to the same rules."""
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidRequest(f"{name} must be an object with {', '.join(allowed)}")
        unknown = sorted(key[:40] for key in value if key not in allowed)
        if unknown:
            raise InvalidRequest(f"{name} has unknown field(s): {', '.join(unknown)}; "
                                 f"it accepts {', '.join(allowed)}")
        return JsonFields(value, allowed)

    def text_mapping(self, name: str) -> dict[str, str] | None:
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidRequest(f"{name} must be an object of strings")
        return {key: checked_text(f"{name}[{key[:40]!r}]", item, nul_ok=False)
                for key, item in value.items()}


def checked_text(name: str, value: object, nul_ok: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string")
    if not nul_ok and "\0" in value:
        raise InvalidRequest(f"{name} must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON can carry lone surrogates, which no program can receive
        raise InvalidRequest(f"{name} is not valid Unicode text") from None
    return value
