"""A file streamed out of a sandbox as the answer's body, a chunk at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
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
        except Exception as error:
            cut = _sandbox_error_in(error)
            if not started or cut is None:
                raise  # before the answer: the exception handlers answer it, as any refusal
            # The answer has started and cannot change: it ends short of its Content-Length,
            # which the server makes plain to the client by closing the connection.
            log.warning("file.download_cut", code=cut.code, detail=cut.message)

    async def _chunks(self) -> AsyncIterator[bytes]:
        assert self._opened is not None
        async for chunk in self._opened.chunks:
            yield chunk


def _sandbox_error_in(error: Exception) -> SandboxError | None:
    """The SandboxError a failure is, or the first of an exception group that holds nothing
    else (the response's task group wraps what the file's chunks raised)."""
    if isinstance(error, SandboxError):
        return error
    if isinstance(error, ExceptionGroup):
        matched, rest = error.split(SandboxError)
        if matched is not None and rest is None:
            return next(_leaves(matched))
    return None


def _leaves(group: BaseExceptionGroup[SandboxError]) -> Iterator[SandboxError]:
    for member in group.exceptions:
        if isinstance(member, BaseExceptionGroup):
            yield from _leaves(member)
        else:
            yield member
