"""Path parameters: sandbox ids and paths of files inside a sandbox."""

from __future__ import annotations

import posixpath

import structlog
from starlette.requests import Request

from sandbox.domain.errors import InvalidRequest
from sandbox.domain.ids import checked_sandbox_id

WORKSPACE = "/workspace"
MAX_PATH_CHARS = 4096


def sandbox_id_of(request: Request) -> str:
    """The id in the URL, checked before anything else sees it: a malformed one is a 404.
    A well-formed one is bound to the request's log lines."""
    sandbox_id = checked_sandbox_id(request.path_params["sandbox_id"])
    structlog.contextvars.bind_contextvars(sandbox_id=sandbox_id)
    return sandbox_id


def sandbox_path(raw: str, what: str = "the file path") -> str:
    """An absolute, normalised path inside the sandbox; relative paths start at /workspace.

    The path never reaches the host's filesystem (the sandbox's files live in its own
    overlay), but it does reach a command line inside the sandbox, so it is checked anyway.
    """
    if not raw:
        raise InvalidRequest(f"{what} is empty")
    if "\0" in raw:
        raise InvalidRequest(f"{what} must not contain a NUL character")
    if len(raw) > MAX_PATH_CHARS:
        raise InvalidRequest(f"{what} is longer than {MAX_PATH_CHARS} characters")
    absolute = raw if raw.startswith("/") else f"{WORKSPACE}/{raw}"
    # normpath keeps a leading "//" (POSIX leaves its meaning open); one slash is meant.
    return "/" + posixpath.normpath(absolute).lstrip("/")
