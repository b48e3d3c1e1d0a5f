"""What a code context's interpreter sends, as the agent delivers it: its frames (decoded
strictly, each for the cell being run) handed to that cell's sink, and its own last words.
A kernel that breaks the protocol is broken for good: what it sends next is dropped, and
`on_broken` gets it killed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from sandbox.adapters.runsc import kernel_frames as frames
from sandbox.adapters.runsc.inside import kernel_layout as layout
from sandbox.adapters.runsc.kernel_frames import CellEnd, KernelFrame, KernelViolation
from sandbox.domain.model import Stream
from sandbox.domain.ports import CellSink, OutputSink

log = structlog.get_logger(__name__)

# What an interpreter wrote to its own stderr outside cells (a failed start), kept for the
# reason given.
LAST_WORDS = 2000


@dataclass
class Cell:
    token: int
    sink: CellSink
    result_bytes: int
    ended: asyncio.Future[CellEnd] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class KernelSink(OutputSink):
    """One interpreter's output as the agent delivers it: frames on stdout; on stderr, its
    own last words (a crash, a fault), told as the running cell's stderr."""

    def __init__(self, context_id: str, ready: bool = False) -> None:
        self.context_id = context_id
        self.reader = frames.FrameReader()
        self.ready = asyncio.Event()
        if ready:
            self.ready.set()
        self.cell: Cell | None = None
        self.broken: str | None = None
        self.failed = asyncio.Event()
        self.on_broken: Callable[[], None] = lambda: None
        self.last_words = bytearray()

    async def write(self, stream: Stream, data: bytes) -> None:
        if self.broken is not None:
            return  # being killed: what it still sends is dropped
        try:
            if stream is Stream.STDERR:
                await self._last_words(data)
                return
            for frame in self.reader.feed(data, self._largest_frame()):
                await self._dispatch(frame)
        except KernelViolation as violation:
            self._break(str(violation))

    def _largest_frame(self) -> int:
        cell = self.cell
        if cell is None or cell.ended.done():
            return frames.IDLE_FRAME
        return cell.result_bytes + frames.FRAME_SLACK

    async def _last_words(self, data: bytes) -> None:
        cell = self.cell
        if cell is not None and not cell.ended.done():
            await cell.sink.output(Stream.STDERR, data)
        self.last_words = (self.last_words + data)[-LAST_WORDS:]

    async def _dispatch(self, frame: KernelFrame) -> None:
        if frame.kind == layout.READY:
            if self.ready.is_set() or frame.cell != 0:
                raise KernelViolation("a READY frame out of turn")
            if frames.ready(frame.payload) != layout.VERSION:
                raise KernelViolation("a kernel of another protocol version")
            self.ready.set()
            return
        cell = self.cell
        if cell is None or cell.ended.done() or frame.cell != cell.token:
            raise KernelViolation(f"a frame of kind {frame.kind} for no cell it was given")
        if frame.kind == layout.STDOUT:
            await cell.sink.output(Stream.STDOUT, frame.payload)
        elif frame.kind == layout.STDERR:
            await cell.sink.output(Stream.STDERR, frame.payload)
        elif frame.kind == layout.RESULT:
            await cell.sink.result(frames.result(frame.payload))
        elif frame.kind == layout.ERROR:
            await cell.sink.error(frames.error(frame.payload))
        else:
            cell.ended.set_result(frames.end(frame.payload))

    def _break(self, reason: str) -> None:
        self.broken = reason
        self.failed.set()
        log.warning("context.broken", context_id=self.context_id, reason=reason)
        self.on_broken()
