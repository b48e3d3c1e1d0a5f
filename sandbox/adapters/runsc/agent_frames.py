"""Frames to and from a sandbox's agent: encoded for it, and decoded strictly from it.

What the agent sends is untrusted (it runs inside the sandbox): every frame is checked for
its size, its kind and the exact shape of its payload, and anything else raises
`ProtocolViolation`. The layouts are the agent's own constants (`inside/agent.py`), so the
two ends cannot drift apart.
"""

from __future__ import annotations

import marshal
import math
import struct
from dataclasses import dataclass

from sandbox.adapters.runsc.inside import agent as layout
from sandbox.domain.model import FileEntry, Stream

KINDS = frozenset(range(layout.HELLO, layout.STAT + 1))
MAX_BODY = layout.MAX_FRAME + 1024
MAX_ENTRIES = 10_000
_FILE_KINDS = {layout.FILE: "file", layout.DIRECTORY: "directory", layout.LINK: "link",
               layout.OTHER: "other"}
_STREAMS = {layout.STDOUT: Stream.STDOUT, layout.STDERR: Stream.STDERR}
_SIGNAL_EXIT_BASE = 128


class ProtocolViolation(Exception):
    """The agent sent what the protocol does not allow; the sandbox cannot be trusted to
    answer any more."""


@dataclass(frozen=True)
class Frame:
    kind: int
    tag: int
    payload: bytes


@dataclass(frozen=True)
class FileStat:
    kind: str
    size: int
    modified_at: float


def request(op: str, tag: int, **args: object) -> bytes:
    body = marshal.dumps((op, tag, args))
    return layout.LENGTH.pack(len(body)) + body


def body_length(header: bytes) -> int:
    length = int(layout.LENGTH.unpack(header)[0])
    if not layout.REPLY.size <= length <= MAX_BODY:
        raise ProtocolViolation(f"a frame of {length} bytes")
    return length


def frame(body: bytes) -> Frame:
    kind, tag = layout.REPLY.unpack_from(body)
    if kind not in KINDS:
        raise ProtocolViolation(f"a frame of unknown kind {kind}")
    return Frame(kind, tag, body[layout.REPLY.size:])


def _exact(shape: struct.Struct, payload: bytes, what: str) -> tuple[object, ...]:
    if len(payload) != shape.size:
        raise ProtocolViolation(f"a {what} frame of {len(payload)} bytes")
    return shape.unpack(payload)


def hello_version(payload: bytes) -> int:
    (version,) = _exact(struct.Struct(">H"), payload, "hello")
    assert isinstance(version, int)
    return version


def started_pid(payload: bytes) -> int:
    (pid,) = _exact(layout.STARTED_PAYLOAD, payload, "started")
    assert isinstance(pid, int)
    if pid <= 0:
        raise ProtocolViolation(f"a process id of {pid}")
    return pid


def output(payload: bytes) -> tuple[Stream, bytes]:
    if len(payload) < 2 or payload[0] not in _STREAMS:
        raise ProtocolViolation("a malformed output frame")
    return _STREAMS[payload[0]], payload[1:]


def exit_code(payload: bytes) -> int:
    """The process's exit code as a shell reports it: a signal N is 128 + N."""
    how, code = _exact(layout.EXIT_PAYLOAD, payload, "exit")
    assert isinstance(how, int) and isinstance(code, int)
    if how == layout.EXITED and 0 <= code <= 255:
        return code
    if how == layout.SIGNALLED and 0 < code < 128:
        return _SIGNAL_EXIT_BASE + code
    raise ProtocolViolation(f"an exit of kind {how} with code {code}")


def error(payload: bytes) -> tuple[int, str]:
    if len(payload) < layout.ERROR_PAYLOAD.size:
        raise ProtocolViolation("a malformed error frame")
    (code,) = layout.ERROR_PAYLOAD.unpack_from(payload)
    message = payload[layout.ERROR_PAYLOAD.size:]
    if len(message) > layout.MAX_MESSAGE:
        raise ProtocolViolation("an error message too long")
    return code, message.decode("utf-8", "replace")


def count(payload: bytes) -> int:
    (number,) = _exact(layout.DONE_PAYLOAD, payload, "done")
    assert isinstance(number, int)
    return number


def stat(payload: bytes) -> FileStat:
    kind, size, modified = _exact(layout.STAT_PAYLOAD, payload, "stat")
    assert isinstance(kind, int) and isinstance(size, int) and isinstance(modified, float)
    return FileStat(_file_kind(kind), size, _finite(modified))


def entries(payload: bytes) -> list[FileEntry]:
    found: list[FileEntry] = []
    offset, entry = 0, layout.ENTRY_PAYLOAD
    while offset < len(payload):
        if len(found) >= MAX_ENTRIES or offset + entry.size > len(payload):
            raise ProtocolViolation("a malformed listing")
        kind, size, modified, length = entry.unpack_from(payload, offset)
        offset += entry.size
        raw = payload[offset:offset + length]
        offset += length
        if len(raw) != length or raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw:
            raise ProtocolViolation("a malformed name in a listing")
        found.append(FileEntry(name=raw.decode("utf-8", "replace"), kind=_file_kind(kind),
                               size=size, modified_at=_finite(modified)))
    return found


@dataclass(frozen=True)
class LiveProcess:
    pid: int
    label: bytes  # what the service tagged it with at its start (a code context's name)


def procs(payload: bytes) -> dict[int, LiveProcess]:
    """The processes the agent still runs, by tag."""
    shape, offset = layout.PROC_PAYLOAD, 0
    live: dict[int, LiveProcess] = {}
    while offset < len(payload):
        if len(live) >= MAX_ENTRIES or offset + shape.size > len(payload):
            raise ProtocolViolation("a malformed process list")
        tag, pid, length = shape.unpack_from(payload, offset)
        offset += shape.size
        label = payload[offset:offset + length]
        offset += length
        if len(label) != length or length > layout.MAX_LABEL or pid <= 0 or tag in live:
            raise ProtocolViolation("a malformed process list")
        live[tag] = LiveProcess(pid, label)
    return live


def _file_kind(kind: int) -> str:
    if kind not in _FILE_KINDS:
        raise ProtocolViolation(f"a file of unknown kind {kind}")
    return _FILE_KINDS[kind]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ProtocolViolation("a time that is not a number")
    return value
