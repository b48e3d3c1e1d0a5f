"""The interpreter of a code context: an IPython shell that runs cells sent by the service and
sends back what they print and display, as frames.

The agent starts it as the sandbox user (`python3 /sandbox/agent/kernel.py`) with the
session's environment, a pipe as stdin (requests) and its two output pipes. At its start it
moves those out of the way: requests are read from a copy of fd 0 (fd 0 becomes /dev/null),
frames are written to a copy of fd 1, and fds 1 and 2 become pipes of its own that a thread
reads, so that whatever a cell writes at the descriptor level (C code, subprocesses) arrives
as its stdout or stderr, never as frame bytes. The agent's stderr pipe stays as the place for
the interpreter's own last words (a fault, a crash of this program).

Requests: `>I` length, then JSON `{"op": "run", "cell", "code", "output_bytes",
"result_bytes"}`. Frames: `>I` length of the rest, then `>BQ` (kind, cell), then the
payload: raw bytes for STDOUT and STDERR, JSON for READY, RESULT, ERROR and END. `cell` is the
service's token for the cell being run (0 for READY): the service drops nothing silently and
takes any frame it did not ask for as a broken context.

This program runs in the tenant's reach (a cell can change any of it): the service checks
every frame it reads as strictly as the agent's. The budgets below only spare the pipes a
flood; the service enforces its caps itself.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import os
import select
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
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
    VERSION,
)
from traitlets.config import Config

MAX_REQUEST = 64 * 1024 * 1024
# Output is sent in frames of at most this much, and at least every FLUSH_S while it comes.
STREAM_FRAME = 32 * 1024
FLUSH_S = 0.05
DRAIN = b"d"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# The matplotlib backends a context turns into its inline one (the sandbox's default is Agg).
REPLACED_BACKENDS = ("", "agg")
CRASHED = 70


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


# IPython's display machinery, sending frames ------------------------------------------------


class FrameDisplayHook(DisplayHook):  # type: ignore[misc]
    """The value of a cell's last expression: a result marked main."""

    channel: Channel

    def write_output_prompt(self) -> None:
        return None

    def write_format_data(self, format_dict: dict[str, object],
                          md_dict: dict[str, object] | None = None) -> None:
        flush_streams()
        self.channel.result(format_dict, main=True)

    def finish_displayhook(self) -> None:
        return None


class FramePublisher(DisplayPublisher):  # type: ignore[misc]
    """display(), figures, and what objects show: results."""

    channel: Channel

    def publish(self, data: dict[str, object], metadata: object = None, source: object = None,
                *, transient: object = None, update: bool = False, **kwargs: object) -> None:
        flush_streams()
        self.channel.result(data, main=False)

    def clear_output(self, wait: bool = False) -> None:
        return None  # what was sent stays sent


class KernelShell(InteractiveShell):  # type: ignore[misc]
    channel: Channel

    def _showtraceback(self, etype: type[BaseException], evalue: BaseException,
                       stb: list[str]) -> None:
        flush_streams()
        self.channel.error(etype.__name__, _text(evalue), self.InteractiveTB.stb2text(stb))


def flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):  # a cell replaced it
            stream.flush()


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a str() that raises still gets a name
        return f"<unprintable {type(value).__name__}>"


# Bundles ------------------------------------------------------------------------------


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


# The loop -----------------------------------------------------------------------------


def run_cell(channel: Channel, capture: Capture, shell: KernelShell, interrupts: Interrupts,
             request: dict[str, object]) -> None:
    channel.begin(request)
    capture.wake()
    count = shell.execution_count
    try:
        interrupts.begin_cell()
        try:
            outcome = shell.run_cell(str(request["code"]), store_history=True)
            count = outcome.execution_count or count
        finally:
            interrupts.end_cell()
    except KeyboardInterrupt:  # between the cell's own code and the shell's bookkeeping
        channel.error("KeyboardInterrupt", "", "KeyboardInterrupt")
    flush_streams()
    capture.drain()
    channel.end(count)


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        part = os.read(fd, size - len(data))
        if not part:
            return None
        data += part
    return bytes(data)


class InlineBackend:
    """Figures are sent as PNG results (matplotlib-inline, drawn with Agg), as in Jupyter. The
    backend is set in this process only, when matplotlib is imported (importing it ahead
    would slow every context's start), so that programs a cell starts keep the sandbox's
    own backend."""

    @classmethod
    def install(cls) -> None:
        if os.environ.get("MPLBACKEND", "").lower() in REPLACED_BACKENDS:
            sys.meta_path.insert(0, cls())

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name != "matplotlib":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec is not None else None
        if loader is None:
            return spec
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            module.rcParams["backend"] = INLINE_BACKEND

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def make_shell(channel: Channel) -> KernelShell:
    config = Config()
    config.HistoryManager.enabled = False  # no history file in the sandbox user's home
    config.InteractiveShell.colors = "nocolor"
    FrameDisplayHook.channel = FramePublisher.channel = KernelShell.channel = channel
    shell: KernelShell = KernelShell.instance(config=config, displayhook_class=FrameDisplayHook,
                                              display_pub_class=FramePublisher)
    return shell


def main() -> None:
    # Imports resolve from the working folder first, as in Jupyter (not from this folder).
    sys.path[0] = ""
    os.environ.setdefault("IPYTHONDIR", "/tmp/.ipython")
    InlineBackend.install()
    interrupts = Interrupts()
    channel = Channel(interrupts)
    streams = [FrameBuffer(channel, STDOUT, 1), FrameBuffer(channel, STDERR, 2)]
    capture = Capture(channel, streams)
    sys.stdout = io.TextIOWrapper(streams[0], encoding="utf-8", errors="backslashreplace",
                                  write_through=True)
    sys.stderr = io.TextIOWrapper(streams[1], encoding="utf-8", errors="backslashreplace",
                                  write_through=True)
    sys.stdin = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
    shell = make_shell(channel)
    capture.start()
    channel.send_json(READY, {"version": VERSION, "pid": os.getpid()})
    try:
        while (request := channel.next_request()) is not None:
            run_cell(channel, capture, shell, interrupts, request)
    except BaseException:
        os.write(channel.faults, traceback.format_exc().encode("utf-8", "replace"))
        os._exit(CRASHED)
    os._exit(0)  # the service closed the requests: the context is being ended


if __name__ == "__main__":
    main()
