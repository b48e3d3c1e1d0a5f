"""Run a script in an interpreter that is already started, as `python3 PATH` would run it.

Used where a process was started ahead of the work (a session's zygote forks one per exec):
the script becomes `__main__`, its folder `sys.path[0]`, its path `sys.argv[0]`; an uncaught
exception is printed by `sys.excepthook` without our own frames; `SystemExit` and
`KeyboardInterrupt` end the process with the status the interpreter would give. The process
then ends as the interpreter ends (threads joined, atexit handlers, streams flushed), with
`os._exit`: a full finalisation adds nothing a script can see, and costs up to 190 ms
inside gVisor with big libraries imported.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import importlib.machinery
import os
import signal
import sys
import types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

# The status of a process that could not flush its stdout at the end (as CPython's).
FLUSH_FAILED = 120


def run(path: str) -> NoReturn:
    reseed()
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__spec__ = None
    main.__cached__ = None  # type: ignore[attr-defined]
    main.__annotations__ = {}
    sys.modules["__main__"] = main
    sys.argv[0] = path
    sys.orig_argv = ["python3", path, *sys.argv[1:]]
    sys.path[0] = os.path.dirname(path)
    try:
        with open(path, "rb") as source:
            code = compile(source.read(), path, "exec", dont_inherit=True)
        exec(code, main.__dict__)
    except SystemExit as ended:
        finish(exit_status(ended))
    except BaseException as error:  # the interpreter's own top level: everything
        # Our own frame (this function) is the first: the script's begin after it. The
        # hook prints the exception's own traceback, so that is where it is cut.
        error.__traceback__ = error.__traceback__.tb_next if error.__traceback__ else None
        sys.last_type, sys.last_value, sys.last_traceback = (
            type(error), error, error.__traceback__)
        sys.excepthook(type(error), error, error.__traceback__)
        if isinstance(error, KeyboardInterrupt):
            finish(1, interrupted=True)
        finish(1)
    finish(0)


def exit_status(ended: SystemExit) -> int:
    """What `sys.exit(code)` makes the process end with: None 0, an int itself, anything
    else printed to stderr and 1."""
    code = ended.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):  # as the interpreter: nothing more to say
        sys.stderr.write(f"{code}\n")
    return 1


def finish(status: int, interrupted: bool = False) -> NoReturn:
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()  # joins non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            if stream is sys.stdout:
                status = FLUSH_FAILED
    if interrupted:
        # An uncaught KeyboardInterrupt ends the interpreter by SIGINT itself.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


def reseed() -> None:
    """Generators seeded when the interpreter started must not repeat in its copies."""
    random = sys.modules.get("random")
    if random is not None:
        random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
