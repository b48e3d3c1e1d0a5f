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

import contextlib
import importlib.util
import io
import os
import sys
import traceback
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from kernel_io import (  # type: ignore[import-not-found]  # beside this file
    Capture,
    Channel,
    FrameBuffer,
    Interrupts,
)
from kernel_layout import READY, STDERR, STDOUT, VERSION  # type: ignore[import-not-found]
from traitlets.config import Config

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# The matplotlib backends a context turns into its inline one (the sandbox's default is Agg).
REPLACED_BACKENDS = ("", "agg")
CRASHED = 70


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
