"""The warm runner of a pooled Python sandbox: an interpreter started before the request, with
modules imported ahead, that runs the request's script in its own process exactly as
`python3 /sandbox/input/main.py` would, and ends as fast as `os._exit`.

The agent starts it as the sandbox user (`python3 /sandbox/agent/runner.py MODULES`) with the
environment and working folder of a cold script, and a control pipe (fd in
SANDBOX_CONTROL_FD). It imports MODULES with its output going nowhere, puts back whatever
the imports changed that a script could see, writes READY on its stderr (the service takes
it off that stream) and waits. The service writes the script to /sandbox/input/main.py and
closes the control pipe with a word on it: the runner compiles the script and lets its own
module end. The interpreter's exit then calls the script from an atexit callback: called
from C with no Python frame beneath it, the script's frames look as they do in a cold run
(tracebacks, `warnings` stack levels, `sys._getframe`). The script's end is found either
by the next atexit callback (it returned) or by an audit hook that sees the interpreter
report the callback's exception; both finish as the interpreter would (threads joined,
atexit handlers, streams flushed, the script's globals torn down) and `os._exit` with the
status a cold run would have, skipping the 150-190 ms a full finalisation of numpy and
pandas costs.

Whatever this runner cannot do exactly (a script that does not compile, another Python)
is handed to a real `python3 /sandbox/input/main.py` with `exec`: same process, cold
semantics.

It runs as the tenant's own process, so it trusts nothing and guards nothing: it only
has to be exact. It imports builtins only (plus what it was asked to import).
"""

import _signal  # type: ignore[import-not-found]
import _warnings
import atexit
import gc
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import CodeType, ModuleType, TracebackType
    from typing import Any, NoReturn

SCRIPT = "/sandbox/input/main.py"
ARGV0 = "python3"
READY = b"\x00gvisor-sandbox-runner-ready\n"
# What the interpreter says when an atexit callback raises: the script's uncaught exception.
CALLBACK_FAILED = "Exception ignored in atexit callback"
# The exit sequence below follows CPython 3.11's Py_FinalizeEx; elsewhere, run cold.
EXACT_ON = (3, 11)
FLUSH_FAILED = 120
SIGINT_STATUS = 128 + 2


class Run:
    """The script's run: its module, and whether its end has been handled."""

    module: "ModuleType | None" = None
    running = False
    shutdown: "Any" = None  # threading._shutdown, set aside while the script runs


# Before the request ---------------------------------------------------------------------


def prepare(modules: "list[str]") -> None:
    """Import `modules` as a cold script would (same sys.path), with their output going
    nowhere, then put back what imports may change that a script could see."""
    signals = {number: _signal.getsignal(number) for number in _catchable()}
    filters = list(_warnings.filters)
    environ = dict(os.environ)
    cwd = os.getcwd()
    limit = sys.getrecursionlimit()
    hooks = {name: getattr(sys, name, None)
             for name in ("displayhook", "excepthook", "breakpointhook", "unraisablehook")}
    quietly(lambda: _import_all(modules))
    for number, handler in signals.items():
        if _signal.getsignal(number) is not handler and handler is not None:
            _signal.signal(number, handler)
    _warnings.filters[:] = filters
    _warnings._filters_mutated()  # type: ignore[attr-defined]
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    os.chdir(cwd)
    sys.setrecursionlimit(limit)
    for name, hook in hooks.items():
        setattr(sys, name, hook)


def _import_all(modules: "list[str]") -> None:
    for name in modules:
        # One that fails is left for the script to import (and fail) itself.
        try:  # noqa: SIM105 (contextlib is one import more)
            __import__(name)
        except Exception:
            pass


def quietly(work: "Any") -> None:
    """Run `work` with fds 1 and 2 on /dev/null, so nothing it prints reaches a request."""
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        try:
            work()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:  # noqa: SIM105 (contextlib is one import more)
                    stream.flush()
                except Exception:
                    pass
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _catchable() -> "list[int]":
    numbers = []
    for number in range(1, _signal.NSIG):
        try:
            _signal.getsignal(number)
        except (OSError, ValueError):
            continue
        if number not in (_signal.SIGKILL, _signal.SIGSTOP):
            numbers.append(number)
    return numbers


def wait_for_work(control: int) -> None:
    """Block until the service closes the control pipe (the script is then in place)."""
    while os.read(control, 4096):
        pass
    os.close(control)


def reseed() -> None:
    """Generators seeded when the interpreter started are seeded again, from the OS, so
    that nothing drawn before the request can be predicted from anything else."""
    random = sys.modules.get("random")
    if random is not None:
        random.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile._name_sequence = None  # type: ignore[attr-defined]  # made again at next use


# Starting the script ----------------------------------------------------------------------


def run_cold() -> "NoReturn":
    """Become `python3 /sandbox/input/main.py` itself: exact, at a cold start's price."""
    os.execv(sys.executable or "/usr/bin/python3", [ARGV0, SCRIPT])


def compiled(path: str) -> "CodeType | None":
    try:
        with open(path, "rb") as script:
            source = script.read()
        return compile(source, path, "exec", dont_inherit=True)
    except BaseException:  # a cold run reports it exactly
        return None


def main_module(path: str) -> "ModuleType":
    """`__main__` as the interpreter makes it for a script: the same names in the same order."""
    import builtins
    from _frozen_importlib_external import SourceFileLoader  # type: ignore[import-not-found]

    module = type(sys)("__main__")
    namespace = module.__dict__
    namespace["__loader__"] = SourceFileLoader("__main__", path)
    namespace["__annotations__"] = {}
    namespace["__builtins__"] = builtins
    namespace["__file__"] = path
    namespace["__cached__"] = None
    return module


def arm(code: "CodeType") -> None:
    """Make the interpreter's exit run the script first (atexit calls the last registered
    first), then `finish_normally`."""
    module = main_module(SCRIPT)
    sys.modules["__main__"] = module
    Run.module = module
    Run.running = True
    threading = sys.modules.get("threading")
    if threading is not None:
        # The exit joins threads before atexit; the script's own threads are joined after it.
        Run.shutdown = threading._shutdown
        threading._shutdown = _not_yet  # type: ignore[attr-defined]
    sys.addaudithook(_on_audit)
    atexit.register(finish_normally)
    atexit.register(exec, code, module.__dict__)


def _not_yet() -> None:
    return None


# Ending as the interpreter would ------------------------------------------------------------


def finish_normally() -> None:
    """The script returned."""
    _flush_io()
    _forget_file()
    finish(0)


def _on_audit(event: str, args: "tuple[Any, ...]") -> None:
    if event != "sys.unraisablehook" or not Run.running:
        return
    report = args[1]
    if report.object is not exec or report.err_msg != CALLBACK_FAILED:
        return
    _flush_io()
    error = report.exc_value
    if isinstance(error, SystemExit):
        finish(_system_exit_status(error))
    sigint = type(error) is KeyboardInterrupt
    status = _print_uncaught(report.exc_type, error, report.exc_traceback)
    if status is not None:
        finish(status)  # the excepthook raised SystemExit
    _forget_file()
    finish(1, sigint=sigint)


def _print_uncaught(kind: "type[BaseException]", error: BaseException,
                    traceback: "TracebackType | None") -> "int | None":
    """As PyErr_Print: sys.last_*, then sys.excepthook (or the default display when it is
    missing or fails). The status of a SystemExit raised by the hook, else None."""
    error.__traceback__ = traceback
    sys.last_type, sys.last_value, sys.last_traceback = kind, error, traceback
    hook = getattr(sys, "excepthook", None)
    sys.audit("sys.excepthook", hook, kind, error, traceback)
    if hook is None:
        _write_stderr("sys.excepthook is missing\n")
        sys.__excepthook__(kind, error, traceback)
        return None
    try:
        hook(kind, error, traceback)
    except SystemExit as exit_:
        return _system_exit_status(exit_)
    except BaseException as failure:
        # As seen from C, which called the hook: without this function's frame.
        failure.__traceback__ = _below(failure.__traceback__, _print_uncaught)
        _flush(getattr(sys, "stdout", None))
        _write_stderr("Error in sys.excepthook:\n")
        sys.__excepthook__(type(failure), failure, failure.__traceback__)
        _write_stderr("\nOriginal exception was:\n")
        sys.__excepthook__(kind, error, traceback)
    return None


def _below(traceback: "TracebackType | None", caller: "Any") -> "TracebackType | None":
    if traceback is not None and traceback.tb_frame.f_code is caller.__code__:
        return traceback.tb_next
    return traceback


def _system_exit_status(error: SystemExit) -> int:
    """As _Py_HandleSystemExit: None is 0, an int is itself (as a C long, then a byte),
    anything else is printed on stderr and is 1."""
    code = error.code
    if code is None:
        return 0
    if isinstance(code, int):
        return (code if -(1 << 63) <= code < (1 << 63) else -1) & 0xFF
    _write_stderr(str(code))
    _write_stderr("\n")
    return 1


def finish(status: int, sigint: bool = False) -> "NoReturn":
    """As Py_FinalizeEx, up to what a script can see: its threads joined, atexit handlers
    run, the streams flushed, its module's objects torn down; then the process ends."""
    Run.running = False
    atexit.unregister(finish_normally)
    atexit.unregister(exec)
    threading = sys.modules.get("threading")
    if threading is not None:
        if Run.shutdown is not None:
            threading._shutdown = Run.shutdown  # type: ignore[attr-defined]
        threading._shutdown()
    atexit._run_exitfuncs()
    failed = _flush_std_files()
    if gc.isenabled():
        gc.collect()
    for name in ("stdin", "stdout", "stderr"):
        setattr(sys, name, getattr(sys, f"__{name}__", None))
    _tear_down_main()
    failed = _flush_std_files() or failed
    if sigint:
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGINT)
        os._exit(SIGINT_STATUS)
    os._exit(FLUSH_FAILED if failed else status)


def _tear_down_main() -> None:
    """The script's globals go as the interpreter's exit takes them: removed from
    sys.modules and cleared in order (their objects' `__del__` runs)."""
    module = Run.module
    if module is None:
        return
    if sys.modules.get("__main__") is module:
        del sys.modules["__main__"]
    module.__dict__.clear()
    if gc.isenabled():
        gc.collect()


def _forget_file() -> None:
    """The interpreter removes these two names once the script has run (not when it ended
    with SystemExit)."""
    if Run.module is not None:
        Run.module.__dict__.pop("__file__", None)
        Run.module.__dict__.pop("__cached__", None)


def _flush_io() -> None:
    for name in ("stderr", "stdout"):
        _flush(getattr(sys, name, None))


def _flush(stream: "Any") -> None:
    if stream is None:
        return
    try:  # noqa: SIM105
        stream.flush()
    except Exception:
        pass


def _flush_std_files() -> bool:
    """As flush_std_files: True when one could not be flushed (the exit status is then 120)."""
    failed = False
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name, None)
        if stream is None or _is_closed(stream):
            continue
        try:
            stream.flush()
        except Exception as error:
            failed = True
            if name == "stdout":
                _write_stderr(f"Exception ignored in: {stream!r}\n")
                sys.__excepthook__(type(error), error, error.__traceback__)
    return failed


def _is_closed(stream: "Any") -> bool:
    try:
        return bool(stream.closed)
    except Exception:
        return False


def _write_stderr(text: str) -> None:
    stream = getattr(sys, "stderr", None)
    try:
        if stream is not None:
            stream.write(text)
            return
    except Exception:
        pass
    os.write(2, text.encode("utf-8", "backslashreplace"))


# The runner's own start ---------------------------------------------------------------------


def main() -> None:
    control = int(os.environ.pop("SANDBOX_CONTROL_FD"))
    modules = [name for name in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if name]
    # What a cold run of the script has from its start.
    sys.argv[:] = [SCRIPT]
    sys.orig_argv[:] = [ARGV0, SCRIPT]
    sys.path[0] = os.path.dirname(SCRIPT)
    prepare(modules)
    gc.collect()
    gc.freeze()  # what the imports made is never traversed again by the script's collections
    os.write(2, READY)
    wait_for_work(control)
    if sys.version_info[:2] != EXACT_ON:
        run_cold()
    reseed()
    code = compiled(SCRIPT)
    if code is None:
        run_cold()
    arm(code)


if __name__ == "__main__":
    main()
