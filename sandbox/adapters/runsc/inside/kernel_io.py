"""The channels of a code context's kernel (kernel.py): frames to the service, requests from
it, the cell's output captured at the descriptor level, SIGINT kept for cells, and the bundles
of results within their budget. Standard library only.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import signal
import threading

from kernel_layout import (  # type: ignore[import-not-found]  # beside this file
    BASE64_TYPES,
    END,
    ERROR,
    HEAD,
    JSON_TYPE,
    LENGTH,
    READY,
    RESULT,
    STDERR,
    STDOUT,
    TEXT_TYPES,
)

MAX_REQUEST = 64 * 1024 * 1024
# Output is sent in frames of at most this much, and at least every FLUSH_S while it comes.
STREAM_FRAME = 32 * 1024
FLUSH_S = 0.05
DRAIN = b"d"


class Interrupts:
    """SIGINT stops a running cell with KeyboardInterrupt, and nothing else: between cells it
    is ignored, and while the main thread writes a frame it waits until the frame is whole
    (a frame cut in half would break the stream). While the cell's own code runs, Python's
    own handler raises it, so that the traceback ends in the cell's code, not in this one."""

    def __init__(self) -> None:
        self.in_cell = False
        self.critical = 0
        self.pending = False
        self.main = threading.get_ident()
        signal.signal(signal.SIGINT, self.on_signal)

    def on_signal(self, signum: int, frame: object) -> None:
        if not self.in_cell:
            return
        if self.critical:
            self.pending = True
            return
        raise KeyboardInterrupt

    def begin_cell(self) -> None:
        self.in_cell = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def end_cell(self) -> None:
        signal.signal(signal.SIGINT, self.on_signal)
        self.in_cell = False

    def enter(self) -> None:
        if threading.get_ident() != self.main:
            return
        self.critical += 1
        if self.critical == 1 and self.in_cell:
            signal.signal(signal.SIGINT, self.on_signal)

    def leave(self) -> None:
        if threading.get_ident() != self.main:
            return
        self.critical -= 1
        if self.critical or not self.in_cell:
            return
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


class Channel:
    """Frames to the service, requests from it, and the budgets of the cell being run."""

    def __init__(self, interrupts: Interrupts) -> None:
        self.requests = os.dup(0)
        self.frames = os.dup(1)
        self.faults = os.dup(2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        self.interrupts = interrupts
        self.lock = threading.Lock()
        self.cell = 0
        self.output_left = {STDOUT: 0, STDERR: 0}
        self.result_left = 0
        self.results_cut = False
        self.error_sent = False

    def send(self, kind: int, payload: bytes) -> None:
        """One frame of the cell being run (READY: of none). Checked and written under the
        lock, so that no frame of a cell follows its END (a thread may still print)."""
        self.interrupts.enter()
        try:
            with self.lock:
                cell = 0 if kind == READY else self.cell
                if kind != READY and not cell:
                    return  # between cells (a thread a cell left behind): nobody asked
                if kind in self.output_left:
                    payload = payload[:self.output_left[kind]]
                    if not payload:
                        return
                    self.output_left[kind] -= len(payload)
                body = HEAD.pack(kind, cell) + payload
                data = memoryview(LENGTH.pack(len(body)) + body)
                while data:
                    data = data[os.write(self.frames, data):]
                if kind == END:
                    self.cell = 0
        finally:
            self.interrupts.leave()

    def send_json(self, kind: int, value: object) -> None:
        self.send(kind, json.dumps(value, ensure_ascii=False, allow_nan=False).encode())

    def next_request(self) -> dict[str, object] | None:
        head = _read_exactly(self.requests, LENGTH.size)
        if head is None:
            return None
        (length,) = LENGTH.unpack(head)
        if length > MAX_REQUEST:
            raise ValueError(f"a request of {length} bytes")
        body = _read_exactly(self.requests, length)
        if body is None:
            return None
        request: dict[str, object] = json.loads(body)
        return request

    def begin(self, request: dict[str, object]) -> None:
        self.cell = int(request["cell"])  # type: ignore[call-overload]
        # One byte more than the cap: the service then knows the output was cut.
        output = int(request["output_bytes"]) + 1  # type: ignore[call-overload]
        self.output_left = {STDOUT: output, STDERR: output}
        self.result_left = int(request["result_bytes"])  # type: ignore[call-overload]
        self.results_cut = False
        self.error_sent = False

    def output(self, kind: int, data: bytes) -> None:
        if data:
            self.send(kind, data)

    def result(self, data: dict[str, object], main: bool) -> None:
        if not self.cell:
            return
        bundle, truncated = _within(_bundle(data), self.result_left)
        if bundle is None:
            self.results_cut = True
            return
        self.result_left -= _size(bundle)
        self.send_json(RESULT, {"data": bundle, "main": main, "truncated": truncated})

    def error(self, name: str, value: str, trace: str) -> None:
        if not self.cell or self.error_sent:
            return
        self.error_sent = True
        self.send_json(ERROR, {"name": name, "value": value, "traceback": trace})

    def end(self, execution_count: int) -> None:
        self.send_json(END, {"execution_count": execution_count,
                             "results_truncated": self.results_cut})


class FrameBuffer(io.BufferedIOBase):
    """A cell's sys.stdout or sys.stderr (under a TextIOWrapper): bytes are kept and sent as
    frames when enough has come, when the capture thread flushes, or before a result."""

    def __init__(self, channel: Channel, kind: int, fd: int) -> None:
        super().__init__()
        self.channel = channel
        self.kind = kind
        self.fd = fd
        self.pending = bytearray()
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd  # code that needs a descriptor gets the captured one

    def isatty(self) -> bool:
        return False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        with self.lock:
            self.pending += data
            full = len(self.pending) >= STREAM_FRAME
        if full:
            self.flush()
        return len(data)

    def flush(self) -> None:
        with self.lock:
            data, self.pending = bytes(self.pending), bytearray()
        for start in range(0, len(data), STREAM_FRAME):
            self.channel.output(self.kind, data[start:start + STREAM_FRAME])


class Capture(threading.Thread):
    """Reads what a cell writes to fds 1 and 2 (its own and its subprocesses') into frames,
    and flushes the Python-level streams while output comes."""

    def __init__(self, channel: Channel, streams: list[FrameBuffer]) -> None:
        super().__init__(name="kernel-capture", daemon=True)
        self.channel = channel
        self.streams = streams
        self.pipes: dict[int, int] = {}
        for fd, kind in ((1, STDOUT), (2, STDERR)):
            read, write = os.pipe()
            os.dup2(write, fd)
            os.close(write)
            os.set_blocking(read, False)
            self.pipes[read] = kind
        self.wake_read, self.wake_write = os.pipe()
        self.drained = threading.Event()

    def run(self) -> None:
        poller = select.poll()
        for fd in (*self.pipes, self.wake_read):
            poller.register(fd, select.POLLIN)
        while True:
            # Idle between cells: no timer wakes a sandbox that does nothing.
            events = poller.poll(FLUSH_S * 1000 if self.channel.cell else None)
            for stream in self.streams:
                stream.flush()
            for fd, _event in events:
                if fd != self.wake_read:
                    self.read(fd)
                elif DRAIN in os.read(fd, 64):
                    self.read_all()
                    self.drained.set()

    def read(self, fd: int) -> bool:
        try:
            data = os.read(fd, STREAM_FRAME)
        except BlockingIOError:
            return False
        self.channel.output(self.pipes[fd], data)
        return bool(data)

    def read_all(self) -> None:
        for fd in self.pipes:
            while self.read(fd):
                pass

    def wake(self) -> None:
        """A cell begins: flush on a timer again."""
        os.write(self.wake_write, b"w")

    def drain(self) -> None:
        """Until what a cell wrote to fds 1 and 2 before now has been sent."""
        self.drained.clear()
        os.write(self.wake_write, DRAIN)
        self.drained.wait()


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        part = os.read(fd, size - len(data))
        if not part:
            return None
        data += part
    return bytes(data)


def _bundle(data: dict[str, object]) -> dict[str, object]:
    """The MIME types the service takes, each as Jupyter carries it: text as text, images in
    base64, JSON as a value."""
    bundle: dict[str, object] = {}
    for mime, value in data.items():
        if mime in TEXT_TYPES:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if isinstance(value, str):
                bundle[mime] = value
        elif mime in BASE64_TYPES:
            if isinstance(value, bytes):
                value = base64.b64encode(value).decode("ascii")
            if isinstance(value, str):
                bundle[mime] = value.replace("\n", "")
        elif mime == JSON_TYPE:
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError, RecursionError):
                continue
            bundle[mime] = value
    if not isinstance(bundle.get("text/plain"), str):
        bundle["text/plain"] = ""
    return bundle


def _size(bundle: dict[str, object]) -> int:
    return sum(len(value.encode()) if isinstance(value, str) else len(json.dumps(value))
               for value in bundle.values())


def _within(bundle: dict[str, object], room: int) -> tuple[dict[str, object] | None, bool]:
    """The bundle as it fits in `room` bytes: its largest types dropped first, then its text
    cut; None when not even that fits."""
    if _size(bundle) <= room:
        return bundle, False
    kept = dict(bundle)
    for mime in sorted(bundle, key=lambda name: -_size({name: bundle[name]})):
        if mime != "text/plain" and _size(kept) > room:
            del kept[mime]
    text = str(kept["text/plain"]).encode()
    if len(text) > room:
        if room <= 0:
            return None, True
        kept["text/plain"] = text[:room].decode("utf-8", "ignore")
    return kept, True
