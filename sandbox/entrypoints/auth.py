"""Bearer tokens: every route but the liveness probe needs `Authorization: Bearer <token>`.

Checked before the app sees the request, so a stranger's request reads no body and changes
nothing. Only SHA-256 digests of the tokens are held; the one presented is hashed and compared
with every digest in constant time, so neither a match's position nor a token's prefix shows
in the answer's timing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox.entrypoints.errors import error_response

log = structlog.get_logger(__name__)

OPEN_PATHS = frozenset({"/healthz"})
# The rest of a refused request is never read, so the connection cannot carry another one.
_REFUSAL_HEADERS = {"WWW-Authenticate": "Bearer", "Connection": "close"}


def token_digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


class BearerTokenMiddleware:
    def __init__(self, app: ASGIApp, digests: Collection[bytes]) -> None:
        self.app = app
        self.digests = tuple(digests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        presented = _bearer_token(scope)
        if presented is not None and self._accepts(presented):
            await self.app(scope, receive, send)
            return
        log.info("auth.refused", reason="no bearer token" if presented is None else "wrong token")
        message = ("this server needs 'Authorization: Bearer <token>'" if presented is None
                   else "the bearer token is not one this server accepts")
        await error_response(401, "unauthorized", message, _REFUSAL_HEADERS)(scope, receive, send)

    def _accepts(self, presented: bytes) -> bool:
        digest = token_digest(presented)
        accepted = False
        for known in self.digests:  # every one, without stopping at a match
            accepted |= hmac.compare_digest(known, digest)
        return accepted


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            token = token.strip()
            return token if scheme.lower() == b"bearer" and token else None
    return None
