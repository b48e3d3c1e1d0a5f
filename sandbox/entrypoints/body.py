"""Reading a request body under a size cap, refusing as early as the size is known."""

from __future__ import annotations

from starlette.requests import Request

from sandbox.domain.errors import PayloadTooLarge


async def read_capped_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    # A chunked body (or a lying Content-Length) is counted as it arrives; reading stops at the cap.
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
