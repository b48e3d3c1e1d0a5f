"""The names and payloads every `Signals` adapter accepts: those PostgreSQL's NOTIFY takes
unquoted (an identifier of at most 63 bytes; a payload under 8000 bytes)."""

from __future__ import annotations

import re

_CHANNEL = re.compile(r"[a-z][a-z0-9_]{0,62}")
MAX_PAYLOAD_BYTES = 7999


def checked_channel(channel: str) -> str:
    if not _CHANNEL.fullmatch(channel):
        raise ValueError(f"not a signal channel name: {channel!r}")
    return channel


def checked_payload(payload: str) -> str:
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"a signal payload holds at most {MAX_PAYLOAD_BYTES} bytes")
    return payload
