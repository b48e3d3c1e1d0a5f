"""Captured output: capped per stream in bytes, decoded as UTF-8 without ever failing."""

from __future__ import annotations

import codecs
from collections.abc import Awaitable, Callable

from sandbox.domain.model import CapturedOutput, Stream
from sandbox.domain.ports import OutputSink

TextListener = Callable[[Stream, str], Awaitable[None]]


class ExecutionEvents:
    """What a caller that streams wants to hear while a script runs. The default hears nothing."""

    async def started(self, sandbox_id: str) -> None:
        return None

    async def output(self, stream: Stream, text: str) -> None:
        return None


class _StreamCapture:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.truncated = False
        self.pieces: list[str] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        """Keep what fits under the cap; return the newly decoded text."""
        if self.truncated:
            return ""
        room = self.limit - self.size
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        self.size += len(data)
        # A multi-byte character split across reads stays in the decoder until completed.
        # At truncation the incomplete tail is dropped rather than shown as garbage.
        text = self.decoder.decode(data, final=False)
        if text:
            self.pieces.append(text)
        return text

    def finish(self) -> str:
        text = "" if self.truncated else self.decoder.decode(b"", final=True)
        if text:
            self.pieces.append(text)
        return text

    def result(self) -> CapturedOutput:
        return CapturedOutput(text="".join(self.pieces), truncated=self.truncated)


class OutputCapture(OutputSink):
    """The OutputSink the use cases hand to a runtime: caps, decodes, and tells a listener."""

    def __init__(self, limit_bytes: int, listener: TextListener | None = None) -> None:
        self._streams = {stream: _StreamCapture(limit_bytes) for stream in Stream}
        self._listener = listener

    async def write(self, stream: Stream, data: bytes) -> None:
        text = self._streams[stream].feed(data)
        if text and self._listener:
            await self._listener(stream, text)

    async def close(self) -> None:
        for stream, capture in self._streams.items():
            text = capture.finish()
            if text and self._listener:
                await self._listener(stream, text)

    def captured(self, stream: Stream) -> CapturedOutput:
        return self._streams[stream].result()
