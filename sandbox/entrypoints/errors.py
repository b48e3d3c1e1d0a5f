"""How failures become answers: `{"error": {"code", "message"}}` with a fitting status."""

from __future__ import annotations

from collections.abc import Mapping

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from sandbox.domain.errors import (
    AtCapacity,
    LeaseLost,
    PayloadTooLarge,
    RuntimeFailure,
    SandboxError,
    StoreUnavailable,
    Unavailable,
)

log = structlog.get_logger(__name__)

STATUS_BY_CODE = {
    "invalid_request": 400,
    "not_found": 404,
    "file_not_found": 404,
    "context_not_found": 404,
    "invalid_state": 409,
    "checkpoint_mismatch": 409,
    # A checkpoint image (of a sandbox, or of a template) that cannot be used or replaced.
    "image_unusable": 409,
    "image_exists": 409,
    "payload_too_large": 413,
    "package_resolution_failed": 422,
    "at_capacity": 429,
    "runtime_failure": 503,
    # Another instance took the sandbox over during the call; a retry finds its new owner.
    "lease_lost": 503,
    "store_unavailable": 503,
    # A handoff between instances took too long, or this instance is stopping.
    "unavailable": 503,
}

INTERNAL_MESSAGE = "internal error; the server's log has the details under this request's id"
RUNTIME_FAILURE_MESSAGE = (
    "the sandbox runtime failed, not the script; try again later "
    "(GET /readyz tells whether the runtime is usable, the server's log has the details)"
)
# Over the body limit or out of time: the rest of the body is never read, so the connection
# cannot carry another request.
_CLOSE = {"Connection": "close"}


class RequestReadTimeout(Exception):
    """The client did not send the whole request body in time."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the request body did not arrive in time (limit: {timeout_s:g} s)")


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers)


def public_error(error: SandboxError) -> dict[str, str]:
    """The error as a client may see it; the runtime's own words (host paths) stay in our log."""
    if isinstance(error, RuntimeFailure):
        log.error("runtime.failed", detail=error.message)
        return {"code": error.code, "message": error.public_message or RUNTIME_FAILURE_MESSAGE}
    if error.code not in STATUS_BY_CODE:
        log.error("sandbox_error.unmapped", code=error.code, detail=error.message)
        return {"code": "internal", "message": INTERNAL_MESSAGE}
    return {"code": error.code, "message": error.message}


async def _sandbox_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SandboxError)
    body = public_error(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, AtCapacity | StoreUnavailable | Unavailable):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, LeaseLost):
        headers["Retry-After"] = "1"
    if isinstance(exc, PayloadTooLarge):
        headers.update(_CLOSE)
    status = STATUS_BY_CODE.get(body["code"], 500)
    return error_response(status, body["code"], body["message"], headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path[:200]
    if exc.status_code == 404:
        return error_response(404, "not_found", f"no such route: {path}")
    if exc.status_code == 405:
        return error_response(
            405, "method_not_allowed", f"{method} is not allowed on {path}", exc.headers
        )
    return error_response(exc.status_code, "http_error", exc.detail, exc.headers)


async def _read_timeout(request: Request, exc: Exception) -> Response:
    log.info("http.read_timeout")
    return error_response(408, "request_timeout", str(exc), _CLOSE)


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    # Nobody is left to read this answer; it only keeps the traceback out of the log.
    log.info("http.client_disconnected")
    return error_response(400, "client_disconnected", "the client left before sending the body")


EXCEPTION_HANDLERS: dict[type[Exception], ExceptionHandler] = {
    SandboxError: _sandbox_error,
    HTTPException: _http_error,
    RequestReadTimeout: _read_timeout,
    ClientDisconnect: _client_disconnect,
}
