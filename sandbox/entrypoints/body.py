"""Reading a request body under a size cap, refusing as early as the size is known."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request

from sandbox.domain.errors import PayloadTooLarge


async def read_capped_body(request: Request, limit: int) -> bytes:
    """The whole body, for the small ones (scripts, JSON)."""
    body = bytearray()
    async for chunk in capped_chunks(request, limit):
        body += chunk
    return bytes(body)


def capped_chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, never held together: a declared Content-Length over
    the cap is refused at once (before anything is read or started), and a chunked body (or
    a lying Content-Length) is counted as it arrives, raising at the chunk that passes it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    return _counted(request, limit)


async def _counted(request: Request, limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        if chunk:
            yield chunk


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
