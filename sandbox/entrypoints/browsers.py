"""What a web page can make a browser send, refused before anything is read or run.

A page on any site may POST a script to a server on loopback without a CORS preflight (a
`text/plain` body is a "simple" request), and a page served from a name that its owner then
points at 127.0.0.1 (DNS rebinding) may read the answers as its own. As Jupyter does, the
server therefore refuses a request whose `Origin` it was not told to allow, and a request
whose `Host` is not one of its own names, with or without tokens.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox.entrypoints.errors import error_response

log = structlog.get_logger(__name__)

# Probes address the server by whatever name or address the platform gives it; the answer is
# a constant that tells a rebinding page nothing it could use.
HOST_FREE_PATHS = frozenset({"/healthz"})
# Nothing of a refused request is read, so the connection cannot carry another one.
_REFUSAL_HEADERS = {"Connection": "close"}
# A name, an IPv4 address or a bracketed IPv6 address, then an optional port.
_HOST = re.compile(r"\A(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::\d{1,5})?\Z")


def host_name(header: str) -> str | None:
    """The name a Host header gives, lower case, without port or brackets; None if it is
    malformed."""
    match = _HOST.match(header.strip().lower())
    return None if match is None else match["ipv6"] or match["name"]


class BrowserGuardMiddleware:
    def __init__(
        self, app: ASGIApp, hosts: Collection[str] | None, origins: Collection[str]
    ) -> None:
        self.app = app
        self.hosts = None if hosts is None else frozenset(hosts)
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._origin_refusal(headers.getlist("origin"))
        if refusal is None and scope["path"] not in HOST_FREE_PATHS:
            refusal = self._host_refusal(headers.getlist("host"))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        code, message = refusal
        log.info("browser.refused", reason=code, host=headers.get("host", "")[:100],
                 origin=headers.get("origin", "")[:100])
        await error_response(403, code, message, _REFUSAL_HEADERS)(scope, receive, send)

    def _origin_refusal(self, origins: list[str]) -> tuple[str, str] | None:
        for origin in origins:
            if origin.strip().lower() not in self.origins:
                return ("origin_not_allowed",
                        f"requests from the web origin {origin[:100]} are not allowed "
                        "(SANDBOX_CORS_ORIGINS names the origins that are)")
        return None

    def _host_refusal(self, hosts: list[str]) -> tuple[str, str] | None:
        if self.hosts is None:
            return None
        if len(hosts) == 1 and self._serves(host_name(hosts[0])):
            return None
        shown = hosts[0][:100] if len(hosts) == 1 else f"{len(hosts)} Host headers"
        return ("host_not_allowed",
                f"this server does not answer to the host {shown} (it answers to its "
                "loopback names and to SANDBOX_ALLOWED_HOSTS)")

    def _serves(self, name: str | None) -> bool:
        if name is None:
            return False
        assert self.hosts is not None
        return name in self.hosts or _is_loopback_address(name)


def _is_loopback_address(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
