"""Pure ASGI middleware (BaseHTTPMiddleware would run the app in another task and lose the
request's context): request ids and the access log, the last-resort 500, the body deadline."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.entrypoints.errors import INTERNAL_MESSAGE, RequestReadTimeout, error_response

log = structlog.get_logger(__name__)

_SANE_REQUEST_ID = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")


class RequestIdMiddleware:
    """Binds a request id to every log line of the request, echoes it, and logs the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _SANE_REQUEST_ID.match(given) else uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500  # what the server answers if the app never starts a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(raw=message.setdefault("headers", []))["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info("http.request", method=scope["method"], path=scope["path"], status=status,
                     duration_ms=round((time.perf_counter() - started) * 1000))


class InternalErrorMiddleware:
    """Answers an unexpected exception with a 500 in the error shape, never with its traceback.

    Starlette's own handler for `Exception` sits outside all middleware (its answer would have
    no request id) and re-raises to the server (which would log the traceback twice).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("http.unexpected_error")
            # Once a response has started it cannot change; the server drops the connection.
            if not response_started:
                await error_response(500, "internal", INTERNAL_MESSAGE)(scope, receive, send)


class RequestBodyDeadlineMiddleware:
    """Fails a request whose body has not fully arrived `timeout_s` after its headers did.

    uvicorn sets no such deadline, so without it a client sending one byte a minute holds a
    connection (and the handler waiting on it) forever. The handler sees `RequestReadTimeout`,
    which the exception handlers answer with a 408.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_complete = False

        async def receive_in_time() -> Message:
            nonlocal body_complete
            if body_complete:
                return await receive()  # later calls only wait for the client to disconnect
            # Checked before waiting too: a receive that never suspends would slip past a timer.
            if loop.time() >= deadline:
                raise RequestReadTimeout(self.timeout_s)
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestReadTimeout(self.timeout_s) from None
            body_complete = message["type"] != "http.request" or not message.get("more_body")
            return message

        await self.app(scope, receive_in_time, send)


class AmbiguousFramingMiddleware:
    """Refuses a request that gives its body's length two ways, `Content-Length` and
    `Transfer-Encoding`, and closes the connection after the answer (RFC 9112, section 6.1).

    A proxy in front may frame such a request by one header and this server by the other;
    whatever one of them takes for the next request would be smuggled past the other. Its
    body is never read.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = {name.lower() for name, _ in scope["headers"]}
            if {b"content-length", b"transfer-encoding"} <= names:
                log.info("http.ambiguous_framing")
                refusal = error_response(
                    400, "ambiguous_framing",
                    "the request has both Content-Length and Transfer-Encoding; send one",
                    {"Connection": "close"},
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
