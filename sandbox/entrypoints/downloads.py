"""A file streamed out of a sandbox as the answer's body, a chunk at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import structlog
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from sandbox.domain.errors import SandboxError
from sandbox.domain.ports import OpenedFile

log = structlog.get_logger(__name__)

Opening = Callable[[], AbstractAsyncContextManager[OpenedFile]]


class FileDownload(StreamingResponse):
    """Opens the file before the answer starts, so a missing, unreadable or too large file is
    a plain error answer with its status; then sends its bytes with their Content-Length as
    they come from the sandbox, and closes the file however the answer ends (sent, client
    gone: StreamingResponse stops on the disconnect, sandbox failed)."""

    def __init__(self, opening: Opening) -> None:
        self._opening = opening
        self._opened: OpenedFile | None = None
        super().__init__(self._chunks(), media_type="application/octet-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            async with self._opening() as opened:
                self._opened = opened
                self.headers["Content-Length"] = str(opened.size)
                if scope["method"] == "HEAD":  # the size is all it asks for
                    await Response(headers=dict(self.headers))(scope, receive, tracking_send)
                    return
                await super().__call__(scope, receive, tracking_send)
        except SandboxError as error:
            if not started:
                raise  # answered by the exception handlers, as any other refusal
            # The answer has started and cannot change: it ends short of its Content-Length,
            # which the server makes plain to the client by closing the connection.
            log.warning("file.download_cut", code=error.code, detail=error.message)

    async def _chunks(self) -> AsyncIterator[bytes]:
        assert self._opened is not None
        async for chunk in self._opened.chunks:
            yield chunk
