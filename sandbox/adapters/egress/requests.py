"""What a sandbox asks of the proxy, parsed with h11: `CONNECT host:port` (a tunnel; TLS
stays end to end) or a plain-HTTP request in absolute form (`GET http://host/path`)."""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass

import h11

from sandbox.adapters.egress.outcome import Refused
from sandbox.adapters.egress.streams import Activity
from sandbox.domain.egress import normalise_host, split_host_port

MAX_HEAD = 64 * 1024
# Headers for one hop only (RFC 9110 7.6.1), never passed on; `upgrade` too: a WebSocket goes
# through a tunnel (wss://), not through a plain-HTTP request.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"trailer", b"upgrade", b"host"})


@dataclass(frozen=True)
class Target:
    host: str  # canonical (egress.normalise_host)
    port: int
    tunnel: bool
    path: bytes = b"/"  # what the upstream server is asked for (plain HTTP)
    authority: bytes = b""  # its Host header


class Incoming:
    """The sandbox's side of one connection, as h11 events."""

    def __init__(self, reader: asyncio.StreamReader, activity: Activity) -> None:
        self._reader = reader
        self._activity = activity
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def next_event(self) -> object:
        try:
            while (event := self.conn.next_event()) is h11.NEED_DATA:
                self.conn.receive_data(await self._activity.read(self._reader))
        except h11.RemoteProtocolError as error:
            raise Refused("bad_request", f"not an HTTP proxy request: {error}") from None
        return event

    async def request(self) -> h11.Request:
        event = await self.next_event()
        if not isinstance(event, h11.Request):
            raise Refused("bad_request", "the connection closed before a request")
        return event

    async def tunnel_start(self) -> bytes:
        """After a CONNECT: the bytes that came with it (a TLS hello sent early)."""
        while (event := await self.next_event()) is not h11.PAUSED:
            if not isinstance(event, h11.EndOfMessage):
                raise Refused("bad_request", "a CONNECT request carries no body")
        return self.conn.trailing_data[0]


def target_of(request: h11.Request) -> Target:
    text = request.target.decode("ascii", "replace")
    try:
        if request.method == b"CONNECT":
            return _authority(text)
        return _absolute(text)
    except ValueError as error:
        raise Refused("bad_request", str(error)) from None


def _authority(text: str) -> Target:
    host, port = split_host_port(text)
    if port is None:
        raise ValueError(f"CONNECT {text[:100]!r}: name the port, host:port")
    return Target(normalise_host(host), port, tunnel=True)


def _absolute(text: str) -> Target:
    url = urllib.parse.urlsplit(text)
    if url.scheme != "http" or not url.netloc:
        raise ValueError(f"{text[:100]!r}: a proxy takes http://host/path here; "
                         "https goes through CONNECT")
    if "@" in url.netloc:
        raise ValueError(f"{text[:100]!r}: credentials in the URL are refused")
    host, port = split_host_port(url.netloc)
    canonical = normalise_host(host)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    authority = url.netloc if port is not None else host
    return Target(canonical, port or 80, tunnel=False, path=path.encode("ascii", "replace"),
                  authority=authority.encode("ascii"))


def forwarded_headers(request: h11.Request, target: Target) -> list[tuple[bytes, bytes]]:
    """The request's headers for the upstream server: Host from the URL (the allow-list
    decided on it), no hop-by-hop header, and the connection closed after the answer."""
    named = {token.strip().lower() for name, value in request.headers
             if name == b"connection" for token in value.split(b",")}
    kept = [(name, value) for name, value in request.headers
            if name not in HOP_BY_HOP and name not in named]
    return [(b"host", target.authority), *kept, (b"connection", b"close")]
