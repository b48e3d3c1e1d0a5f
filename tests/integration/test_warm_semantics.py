"""A warm sandbox runs a script exactly as a cold one does: the same scripts, run both ways
on real gVisor, compared field by field.

The warm side is what a pool hands a request: a sandbox started ahead (for Python, with the
default modules imported in a waiting interpreter), given the script, destroyed afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator

import pytest

from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle.execution import run_script
from sandbox.domain.model import ExecutionResult, Language, Limits, Program, SandboxSpec, Stream
from sandbox.domain.output import OutputCapture
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]

PREIMPORT = Settings().pool_modules()
PY, SH = Language.PYTHON, Language.BASH

# (name, language, script). Each prints facts that a cold and a warm run must agree on.
SCRIPTS = [
    ("hello", PY, 'print("hello")\n'),
    ("stdout and stderr in order", PY,
     "import sys\nfor i in range(3):\n    print('out', i)\n    print('err', i, file=sys.stderr)\n"),
    ("binary output", PY, "import sys\nsys.stdout.buffer.write(bytes(range(256)))\n"),
    ("exit code", PY, "import sys\nprint('before')\nsys.exit(3)\n"),
    ("SystemExit with text", PY, "import sys\nsys.exit('it went wrong')\n"),
    ("SystemExit with None", PY, "raise SystemExit\n"),
    ("SystemExit past a byte", PY, "raise SystemExit(256 + 7)\n"),
    ("SystemExit with an object", PY, "raise SystemExit([1, 2])\n"),
    ("exit() of site", PY, "print('x')\nexit(4)\n"),
    ("uncaught exception", PY, "def a():\n    b()\ndef b():\n    raise TypeError('deep')\na()\n"),
    ("chained exception", PY,
     "try:\n    1 / 0\nexcept Exception as e:\n    raise RuntimeError('wrapped') from e\n"),
    ("KeyboardInterrupt", PY, "print('before')\nraise KeyboardInterrupt\n"),
    ("KeyboardInterrupt subclass", PY, "class K(KeyboardInterrupt):\n    pass\nraise K()\n"),
    ("syntax error", PY, "print('never')\nif True\n    pass\n"),
    ("indentation error", PY, "def f():\nreturn 1\n"),
    ("null byte in the source", PY, "print('a')\x00\n"),
    ("source not UTF-8", PY, "print('\udcff')\n"),
    ("coding cookie", PY, "# -*- coding: latin-1 -*-\nprint('\udce9')\n"),
    ("excepthook replaced", PY,
     "import sys\ndef hook(t, v, tb):\n    print('hooked', t.__name__, v, file=sys.stderr)\n"
     "sys.excepthook = hook\nraise ValueError('x')\n"),
    ("excepthook that fails", PY,
     "import sys\ndef hook(t, v, tb):\n    raise RuntimeError('hook broke')\n"
     "sys.excepthook = hook\nraise ValueError('x')\n"),
    ("excepthook that exits", PY,
     "import sys\ndef hook(t, v, tb):\n    sys.exit(7)\nsys.excepthook = hook\n"
     "raise ValueError('x')\n"),
    ("main module and argv", PY,
     "import sys\nprint(__name__, __file__, sys.argv, sys.orig_argv, sys.path[0])\n"
     "print(list(globals()), __loader__.__class__.__name__, __spec__, __package__, __cached__)\n"
     "print(type(__builtins__), __doc__, sys.modules['__main__'].__dict__ is globals())\n"),
    ("no caller below the module", PY,
     "import sys, traceback, warnings\ntraceback.print_stack()\nprint(sys._getframe().f_back)\n"
     "warnings.warn('careful', stacklevel=2)\n"),
    ("environment and folder", PY,
     "import os\nprint(sorted(os.environ.items()))\n"
     "print(os.getcwd(), os.getuid(), os.getgid())\n"),
    ("stdin is empty", PY, "import sys\nprint(repr(sys.stdin.read()), sys.stdin.isatty())\n"),
    ("signal handlers", PY,
     "import signal\nprint({s.name: str(signal.getsignal(s)) for s in signal.Signals\n"
     "       if s not in (signal.SIGKILL, signal.SIGSTOP)})\n"),
    ("warnings filters", PY,
     "import warnings\nprint(warnings.filters)\nwarnings.warn('plain')\n"
     "warnings.warn('old', DeprecationWarning)\n"),
    ("atexit order", PY,
     "import atexit\natexit.register(print, 'registered first')\n"
     "atexit.register(print, 'registered second')\nprint('main')\n"),
    ("atexit handler that fails", PY,
     "import atexit\ndef bad():\n    raise ValueError('in atexit')\natexit.register(bad)\n"),
    ("atexit after SystemExit", PY,
     "import atexit, sys, __main__\natexit.register(lambda: print(hasattr(__main__, '__file__')))\n"
     "sys.exit(5)\n"),
    ("atexit after an exception", PY,
     "import atexit, sys, __main__\n"
     "atexit.register(lambda: print(hasattr(__main__, '__file__'), sys.last_type))\n"
     "raise OSError(2, 'nope')\n"),
    ("threads are joined", PY,
     "import threading, time\ndef work():\n    time.sleep(0.3)\n    print('thread done')\n"
     "threading.Thread(target=work).start()\nprint('main done')\n"),
    ("daemon threads are not", PY,
     "import threading, time\ndef work():\n    time.sleep(5)\n    print('never')\n"
     "threading.Thread(target=work, daemon=True).start()\nprint('main done')\n"),
    ("threads joined after an exception", PY,
     "import threading, time\ndef work():\n    time.sleep(0.3)\n    print('thread done')\n"
     "threading.Thread(target=work).start()\nraise ValueError('main failed')\n"),
    ("objects torn down at exit", PY,
     "class A:\n    def __del__(self):\n        print('A deleted')\na = A()\n"
     "f = open('/dev/stdout', 'w')\nf.write('unflushed file\\n')\nprint('end')\n"),
    ("stdout replaced", PY, "import sys, io\nprint('to real')\nsys.stdout = io.StringIO()\n"
     "print('lost')\n"),
    ("stdout closed", PY, "import sys\nprint('x')\nsys.stdout.close()\n"),
    ("__del__ that raises", PY,
     "class A:\n    def __del__(self):\n        raise ValueError('in del')\nA()\nprint('after')\n"),
    ("os._exit", PY, "import os\nprint('x', flush=True)\nos._exit(9)\n"),
    ("pickle of a class of the script", PY,
     "import pickle\nclass P:\n    x = 1\nprint(pickle.loads(pickle.dumps(P())).x)\n"),
    ("source of a function", PY,
     "import inspect\ndef f():\n    return 42\nprint(inspect.getsource(f))\n"),
    ("open files", PY, "import os\nprint(sorted(os.listdir('/proc/self/fd')))\n"),
    ("a subprocess", PY,
     "import subprocess\nprint(subprocess.run(['sh', '-c', 'echo child; exit 3']).returncode)\n"),
    ("processes left behind end with the script", PY,
     "import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep 0.2; echo late'])\n"
     "subprocess.Popen(['setsid', 'sh', '-c', 'sleep 0.2; echo late too'])\nprint('now')\n"),
    ("pandas", PY,
     "import pandas as pd\nprint(pd.DataFrame({'a': [1, 2, 3]}).describe())\n"),
    ("bash hello", SH, "echo hello from bash\n"),
    ("bash exit code and stderr", SH, "echo oops >&2\necho out\nexit 42\n"),
    ("bash environment and folder", SH, "env | sort\npwd\nid\n"),
    ("bash stdin", SH, "cat; echo \"read: $?\"\n"),
    ("bash args", SH, "echo \"$0\" \"$#\"\n"),
    ("bash signals", SH, "trap -p\nkill -l 1 >/dev/null && echo ok\n"),
    ("bash processes left behind end with the script", SH,
     "(sleep 0.2; echo late) &\nsetsid sh -c 'sleep 0.2; echo late too' &\necho now\n"),
    ("bash syntax error", SH, "echo before\nif then fi\n"),
]


def normalised(text: str) -> str:
    """Object addresses differ from run to run, on either path."""
    return re.sub(r"0x[0-9a-f]+", "0x…", text)


def fields(result: ExecutionResult) -> dict[str, object]:
    outcome = result.outcome
    return {
        "exit_code": outcome.exit_code, "timed_out": outcome.timed_out,
        "oom_killed": outcome.oom_killed,
        "stdout": normalised(result.stdout.text), "stderr": normalised(result.stderr.text),
        "stdout_truncated": result.stdout.truncated, "stderr_truncated": result.stderr.truncated,
    }


@dataclasses.dataclass
class Warm:
    runtime: RunscSandboxRuntime
    spec: SandboxSpec
    language: Language

    async def run(self, source: bytes) -> ExecutionResult:
        capture = OutputCapture(self.spec.limits.output_bytes)
        outcome = await self.runtime.run_warm(
            self.spec.sandbox_id, Program.script(self.language, source), capture,
            self.spec.limits.timeout_s,
        )
        await capture.close()
        return ExecutionResult(self.spec.sandbox_id, self.language.value, outcome,
                               capture.captured(Stream.STDOUT), capture.captured(Stream.STDERR))


@dataclasses.dataclass
class WarmStarter:
    runtime: RunscSandboxRuntime
    started: list[str] = dataclasses.field(default_factory=list)

    async def start(self, language: Language, limits: Limits) -> Warm:
        spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=limits)
        self.started.append(spec.sandbox_id)
        await self.runtime.start_warm(spec, language, PREIMPORT if language is PY else ())
        return Warm(self.runtime, spec, language)


@pytest.fixture
async def warm(runtime: RunscSandboxRuntime) -> AsyncIterator[WarmStarter]:
    """Starts warm sandboxes; destroys them afterwards, as their pool would."""
    starter = WarmStarter(runtime)
    yield starter
    for sandbox_id in starter.started:
        await runtime.destroy(sandbox_id)


async def cold_and_warm(
    runtime: RunscSandboxRuntime, warm: WarmStarter, language: Language, source: bytes,
    limits: Limits,
) -> tuple[ExecutionResult, ExecutionResult]:
    starting = asyncio.create_task(warm.start(language, limits))  # warms while cold runs
    try:
        cold = await run_script(runtime, language, source, limits)
    finally:
        sandbox = await starting
    return cold, await sandbox.run(source)


@pytest.mark.parametrize(("language", "source"),
                         [(language, source) for _, language, source in SCRIPTS],
                         ids=[name for name, _, _ in SCRIPTS])
async def test_a_warm_run_gives_what_a_cold_run_gives(
    runtime: RunscSandboxRuntime, warm: WarmStarter, limits: Limits, language: Language,
    source: str,
) -> None:
    data = source.encode("utf-8", "surrogateescape")

    cold, hot = await cold_and_warm(runtime, warm, language, data, limits)

    assert fields(hot) == fields(cold)


@pytest.mark.parametrize("language", [PY, SH])
async def test_a_warm_script_past_its_timeout_ends_as_a_cold_one(
    runtime: RunscSandboxRuntime, warm: WarmStarter, limits: Limits, language: Language,
) -> None:
    source = (b"import time\nprint('before', flush=True)\ntime.sleep(30)\n" if language is PY
              else b"echo before\nsleep 30\n")

    # Long enough for a cold Python to start on a busy machine.
    cold, hot = await cold_and_warm(runtime, warm, language, source,
                                    dataclasses.replace(limits, timeout_s=5))

    assert fields(hot) == fields(cold)
    assert hot.outcome.timed_out is True
    assert hot.stdout.text == "before\n"


async def test_a_warm_bash_memory_bomb_is_out_of_memory_as_a_cold_one(
    runtime: RunscSandboxRuntime, warm: WarmStarter, limits: Limits,
) -> None:
    source = b"a=0123456789abcdef\nwhile true; do a=$a$a; done\n"

    cold, hot = await cold_and_warm(runtime, warm, SH, source,
                                    dataclasses.replace(limits, memory_mb=128))

    assert fields(hot) == fields(cold)
    assert hot.outcome.oom_killed is True


async def test_a_python_memory_bomb_with_threads_ends_warm_as_cold_out_of_memory(
    runtime: RunscSandboxRuntime, warm: WarmStarter, limits: Limits,
) -> None:
    """A warm Python always has threads (numpy's). gVisor (20240729) alone stalls a process
    with several threads at its memory limit; the sandbox's oomScoreAdj makes the kernel end
    the whole sandbox instead, so a memory bomb ends out of memory, warm as cold."""
    source = (b"import threading\nthreading.Thread(target=threading.Event().wait, daemon=True)"
              b".start()\nblocks = []\nwhile True:\n    blocks.append(bytearray(2 ** 24))\n")

    cold, hot = await cold_and_warm(runtime, warm, PY, source,
                                    dataclasses.replace(limits, memory_mb=256, timeout_s=20))

    assert fields(hot) == fields(cold)
    assert (hot.outcome.oom_killed, hot.outcome.exit_code) == (True, 137)


async def test_warm_runs_share_no_random_state(
    warm: WarmStarter, limits: Limits,
) -> None:
    source = (b"import random, uuid, numpy\n"
              b"print(random.random(), numpy.random.rand(), uuid.uuid4())\n")

    first, second = await asyncio.gather(warm.start(PY, limits), warm.start(PY, limits))
    outputs = [(await sandbox.run(source)).stdout.text for sandbox in (first, second)]

    drawn = [output.split() for output in outputs]
    assert all(len(values) == 3 for values in drawn)
    assert all(a != b for a, b in zip(*drawn, strict=True))


async def test_files_and_processes_of_one_warm_run_are_gone_for_the_next(
    warm: WarmStarter, limits: Limits,
) -> None:
    leave = b"echo left > /tmp/left.txt\necho left > /workspace/left.txt\n" \
            b"setsid sleep 300 >/dev/null 2>&1 < /dev/null &\necho done\n"
    look = b"ls /tmp /workspace\ngrep -l '^sleep' /proc/[0-9]*/cmdline 2>/dev/null | wc -l\n"

    first = await warm.start(SH, limits)
    left = await first.run(leave)
    second = await warm.start(SH, limits)
    seen = await second.run(look)

    assert left.stdout.text == "done\n"
    assert "left.txt" not in seen.stdout.text
    assert seen.stdout.text.strip().endswith("0")
