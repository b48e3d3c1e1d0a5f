"""Frames from a code context's kernel (inside/kernel.py), decoded strictly.

The kernel runs the tenant's cells in its own process, so a cell can make it send anything:
every frame is checked for its size, its kind, its cell, and the exact shape of its payload
(known keys only, each of its type, images valid base64, JSON without NaN), and anything else
raises `KernelViolation`. A frame that passes is no more than what the cell could have made
with `display()`: it can only speak for its own cell.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from sandbox.adapters.runsc.inside import kernel_layout as layout
from sandbox.domain.cells import (
    BASE64_TYPES,
    JSON_TYPE,
    MIME_TYPES,
    TEXT_TYPES,
    CellError,
    CellResult,
)

# Between cells the kernel sends nothing but its READY; a small frame is all it may start.
IDLE_FRAME = 64 * 1024
# Beyond a cell's results cap, what a frame's own fields may take.
FRAME_SLACK = 64 * 1024
MAX_NAME = 1000
MAX_COUNT = 2**31 - 1
_RESULT_KEYS = {"data", "main", "truncated"}
_ERROR_KEYS = {"name", "value", "traceback"}
_END_KEYS = {"execution_count", "results_truncated"}
_READY_KEYS = {"version", "pid"}


class KernelViolation(Exception):
    """The kernel sent what its protocol does not allow; the context cannot be trusted to
    answer any more."""


@dataclass(frozen=True)
class KernelFrame:
    kind: int
    cell: int
    payload: bytes


@dataclass(frozen=True)
class CellEnd:
    execution_count: int
    results_truncated: bool


class FrameReader:
    """Frames out of the kernel's output as it arrives, in pieces of any size."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes, max_body: int) -> list[KernelFrame]:
        """The frames `data` completes. A frame announced larger than `max_body` is a
        violation at once, before its body is waited for (or held)."""
        self._pending += data
        found = []
        while len(self._pending) >= layout.LENGTH.size:
            (length,) = layout.LENGTH.unpack_from(self._pending)
            if not layout.HEAD.size <= length <= max_body:
                raise KernelViolation(f"a frame of {length} bytes")
            if len(self._pending) < layout.LENGTH.size + length:
                break
            body = bytes(self._pending[layout.LENGTH.size:layout.LENGTH.size + length])
            del self._pending[:layout.LENGTH.size + length]
            kind, cell = layout.HEAD.unpack_from(body)
            if not layout.READY <= kind <= layout.END:
                raise KernelViolation(f"a frame of unknown kind {kind}")
            found.append(KernelFrame(kind, cell, body[layout.HEAD.size:]))
        return found

    @property
    def holding(self) -> int:
        return len(self._pending)


def ready(payload: bytes) -> int:
    """The kernel's protocol version."""
    value = _object(payload, _READY_KEYS, "ready")
    return _integer(value["version"], "ready version")


def result(payload: bytes) -> CellResult:
    value = _object(payload, _RESULT_KEYS, "result")
    data = value["data"]
    if not isinstance(data, dict) or not data.keys() <= MIME_TYPES:
        raise KernelViolation("a result whose bundle is not one of known MIME types")
    if not isinstance(data.get("text/plain"), str):
        raise KernelViolation("a result without text/plain")
    for mime, item in data.items():
        _check_representation(mime, item)
    return CellResult(data, is_main_result=_flag(value["main"], "result main"),
                      truncated=_flag(value["truncated"], "result truncated"))


def error(payload: bytes) -> CellError:
    value = _object(payload, _ERROR_KEYS, "error")
    name, text, trace = (_text(value[key], f"error {key}") for key in ("name", "value",
                                                                        "traceback"))
    if not name or len(name) > MAX_NAME:
        raise KernelViolation("an error without a fitting name")
    return CellError(name, text, trace)


def end(payload: bytes) -> CellEnd:
    value = _object(payload, _END_KEYS, "end")
    count = _integer(value["execution_count"], "execution count")
    return CellEnd(count, _flag(value["results_truncated"], "end results_truncated"))


def _check_representation(mime: str, item: object) -> None:
    if mime in TEXT_TYPES:
        _text(item, mime)
    elif mime in BASE64_TYPES:
        try:
            base64.b64decode(_text(item, mime), validate=True)
        except binascii.Error:
            raise KernelViolation(f"{mime} that is not base64") from None
    elif mime == JSON_TYPE:
        _check_json(item)
    else:
        raise KernelViolation(f"a representation of unknown type {mime}")


def _check_json(value: object) -> None:
    """Every string in it, keys included, is text a client can take (walked without
    recursion: the parser allowed the nesting already)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _text(item, JSON_TYPE)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())


def _object(payload: bytes, keys: set[str], what: str) -> dict[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8"), object_pairs_hook=_unique,
                           parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as problem:
        raise KernelViolation(f"a {what} frame that is not JSON: {str(problem)[:100]}") from None
    if not isinstance(value, dict) or value.keys() != keys:
        raise KernelViolation(f"a {what} frame of another shape")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("a key given twice")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise KernelViolation(f"{what} that is not text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no text a client could take
        raise KernelViolation(f"{what} that is not valid text") from None
    return value


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise KernelViolation(f"{what} that is not true or false")
    return value


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise KernelViolation(f"{what} that is not a count")
    return value
