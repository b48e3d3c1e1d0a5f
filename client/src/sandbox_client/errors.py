"""Exceptions named after the API's error codes.

Every answer that is not a success becomes a `SandboxError` (or a subclass); a script that
fails is not one: its exit code is in the result.
"""

from __future__ import annotations

import json
from typing import Any

import httpx


class SandboxError(Exception):
    """An error answer of the service, or no answer at all. `code` is the API's error code
    (`invalid_request`, `not_found`, ...), `status` the HTTP status (0: no answer)."""

    default_code = "error"

    def __init__(self, message: str, code: str | None = None, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidRequest(SandboxError):
    default_code = "invalid_request"


class Unauthorized(SandboxError):
    """No token, or a wrong one (set SANDBOX_API_TOKEN)."""

    default_code = "unauthorized"


class Forbidden(SandboxError):
    """The server refused the host name or the web origin it was called under."""

    default_code = "forbidden"


class NotFound(SandboxError):
    default_code = "not_found"


class SandboxNotFound(NotFound):
    default_code = "not_found"


class FileNotFound(NotFound):
    default_code = "file_not_found"


class InvalidState(SandboxError):
    """The sandbox is not in a state that allows the call (a 409)."""

    default_code = "invalid_state"


class CheckpointMismatch(InvalidState):
    """The sandbox was suspended by another runsc version or rootfs than the server has."""

    default_code = "checkpoint_mismatch"


class PayloadTooLarge(SandboxError):
    default_code = "payload_too_large"


class PackageInstallFailed(SandboxError):
    """The packages could not be resolved or installed (pip's reason is in the message)."""

    default_code = "package_resolution_failed"


class CapacityExceeded(SandboxError):
    """The service is at capacity; `retry_after` is the wait it asked for, in seconds."""

    default_code = "at_capacity"

    def __init__(
        self, message: str, code: str | None = None, status: int = 429,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code, status)
        self.retry_after = retry_after


class RuntimeFailure(SandboxError):
    """The sandbox runtime failed, not the code (a 503)."""

    default_code = "runtime_failure"


class ServerError(SandboxError):
    """Any other failure of the service (a 5xx)."""

    default_code = "internal"


class ConnectionFailed(SandboxError):
    """The service could not be reached, or the connection broke."""

    default_code = "connection_failed"


class RequestTimeout(SandboxError):
    """The call did not complete within its time limit (the client's, not the script's)."""

    default_code = "request_timeout"


class ProtocolError(SandboxError):
    """The service answered something this client does not understand."""

    default_code = "protocol_error"


ERRORS_BY_CODE: dict[str, type[SandboxError]] = {
    "invalid_request": InvalidRequest,
    "unauthorized": Unauthorized,
    "not_found": SandboxNotFound,
    "file_not_found": FileNotFound,
    "invalid_state": InvalidState,
    "checkpoint_mismatch": CheckpointMismatch,
    "payload_too_large": PayloadTooLarge,
    "package_resolution_failed": PackageInstallFailed,
    "at_capacity": CapacityExceeded,
    "runtime_failure": RuntimeFailure,
    "internal": ServerError,
}

# For answers whose code this client does not know (or that carry none).
ERRORS_BY_STATUS: dict[int, type[SandboxError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: InvalidState,
    413: PayloadTooLarge,
    422: PackageInstallFailed,
    429: CapacityExceeded,
    503: RuntimeFailure,
}


def error_from(code: str, message: str, status: int = 0) -> SandboxError:
    """The exception for an error the API reported (in an answer or a stream event)."""
    kind = ERRORS_BY_CODE.get(code) or ERRORS_BY_STATUS.get(status)
    if kind is None:
        kind = ServerError if status >= 500 else SandboxError
    return kind(message, code, status)


def error_from_response(response: httpx.Response) -> SandboxError:
    """The exception for an error answer whose body has been read."""
    code, message = _error_body(response)
    error = error_from(code, message, response.status_code)
    if isinstance(error, CapacityExceeded):
        error.retry_after = retry_after_of(response)
    return error


def _error_body(response: httpx.Response) -> tuple[str, str]:
    fallback = f"http_{response.status_code}"
    try:
        body: Any = json.loads(response.content)
    except ValueError:
        text = response.content.decode("utf-8", errors="replace").strip()[:200]
        return fallback, text or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return fallback, str(body)[:200]
    return str(error.get("code") or fallback), str(error.get("message") or "")


def retry_after_of(response: httpx.Response) -> float | None:
    """Retry-After in seconds; the HTTP-date form is not used by this service."""
    value = response.headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None
