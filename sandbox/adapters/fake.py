"""An in-memory runtime for unit tests. It never runs the code it is given.

It understands a tiny subset of each language, enough for the contract suite (which runs the
same cases against real gVisor): in Python, `import ...`, `print("text")`, `print("c" * N)`,
`print(..., file=sys.stderr)`, `sys.exit(N)`, `time.sleep(S)`; in Bash, `echo text`,
`echo text >&2`, `exit N`, `sleep S`. Anything else ends with exit code 2 and a message on
stderr. Tests can also program the outcome of a given script with `program()`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from sandbox.domain.model import Language, Outcome, Program, SandboxSpec, Stream
from sandbox.domain.ports import OutputSink, SandboxRuntime


@dataclass(frozen=True)
class FakeBehaviour:
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    sleep_s: float = 0.0
    oom_killed: bool = False


_PY_PRINT = re.compile(
    r"""print\((?P<q>["'])(?P<text>[^"'\\]*)(?P=q)(?:\s*\*\s*(?P<times>\d+))?"""
    r"""(?P<err>,\s*file=sys\.stderr)?\)"""
)
_PY_EXIT = re.compile(r"(?:sys\.)?exit\((?P<code>\d+)\)")
_PY_SLEEP = re.compile(r"time\.sleep\((?P<s>[\d.]+)\)")
_SH_ECHO = re.compile(r"echo\s+(?P<q>['\"]?)(?P<text>[^'\">]*)(?P=q)(?P<err>\s*>&2)?")
_SH_EXIT = re.compile(r"exit\s+(?P<code>\d+)")
_SH_SLEEP = re.compile(r"sleep\s+(?P<s>[\d.]+)")

_Step = tuple[str, object]


def _steps(program: Program) -> Iterator[_Step]:
    text = program.source.decode("utf-8", errors="replace")
    python = program.language is Language.PYTHON
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or (python and line.startswith("import ")):
            continue
        printed = (_PY_PRINT if python else _SH_ECHO).fullmatch(line)
        if printed:
            data = printed["text"] * int(printed.groupdict().get("times") or 1)
            yield ("stderr" if printed["err"] else "stdout", data.encode() + b"\n")
            continue
        ended = (_PY_EXIT if python else _SH_EXIT).fullmatch(line)
        if ended:
            yield ("exit", int(ended["code"]))
            return
        slept = (_PY_SLEEP if python else _SH_SLEEP).fullmatch(line)
        if slept:
            yield ("sleep", float(slept["s"]))
            continue
        yield ("stderr", f"fake runtime cannot run: {line[:80]}\n".encode())
        yield ("exit", 2)
        return


class FakeSandboxRuntime(SandboxRuntime):
    def __init__(self) -> None:
        self._programmed: dict[bytes, FakeBehaviour] = {}
        self.live: set[str] = set()
        self.runs: list[tuple[SandboxSpec, Program]] = []
        self.problems: list[str] = []

    def program(self, source: bytes, behaviour: FakeBehaviour) -> None:
        self._programmed[source] = behaviour

    @property
    def identity(self) -> dict[str, str]:
        return {"runtime": "fake", "rootfs": "fake"}

    async def readiness(self) -> list[str]:
        return list(self.problems)

    async def run(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> Outcome:
        self.runs.append((spec, program))
        self.live.add(spec.sandbox_id)
        started = time.monotonic()
        try:
            async with asyncio.timeout(spec.limits.timeout_s):
                exit_code, oom = await self._play(program, sink)
        except TimeoutError:
            return Outcome(exit_code=None, timed_out=True, duration_ms=_ms_since(started))
        finally:
            self.live.discard(spec.sandbox_id)
        return Outcome(exit_code=exit_code, oom_killed=oom, duration_ms=_ms_since(started))

    async def _play(self, program: Program, sink: OutputSink) -> tuple[int | None, bool]:
        behaviour = self._programmed.get(program.source)
        if behaviour is not None:
            await sink.write(Stream.STDOUT, behaviour.stdout)
            await sink.write(Stream.STDERR, behaviour.stderr)
            await asyncio.sleep(behaviour.sleep_s)
            return (None if behaviour.oom_killed else behaviour.exit_code), behaviour.oom_killed
        for kind, value in _steps(program):
            if kind == "exit":
                assert isinstance(value, int)
                return value, False
            if kind == "sleep":
                assert isinstance(value, float)
                await asyncio.sleep(value)
            else:
                assert isinstance(value, bytes)
                await sink.write(Stream(kind), value)
        return 0, False


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
