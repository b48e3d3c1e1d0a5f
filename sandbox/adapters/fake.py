"""An in-memory runtime for unit tests. It never runs the code it is given.

It understands a tiny subset of each language, enough for the contract suite (which runs the
same cases against real gVisor): in Python, `import ...`, `print("text")`, `print("c" * N)`,
`print(..., file=sys.stderr)`, `sys.exit(N)`, `time.sleep(S)`; in Bash, `echo text`,
`echo text >&2`, `exit N`, `sleep S`. Anything else ends with exit code 2 and a message on
stderr. Tests can also program the outcome of a given script with `program()`.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import json
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from sandbox.adapters.fake_contexts import FakeContexts, FakeKernel
from sandbox.adapters.limit_layers import limit_layers
from sandbox.domain.cells import CellLimits, CellOutcome, CodeContext
from sandbox.domain.errors import FileNotFoundInSandbox, PayloadTooLarge, RuntimeFailure
from sandbox.domain.model import FileEntry, Language, Outcome, Program, SandboxSpec, Stream
from sandbox.domain.ports import (
    FILE_CHUNK_BYTES,
    CellSink,
    OpenedFile,
    OutputSink,
    SandboxRuntime,
)


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

# The one file of a fake checkpoint image: the sandbox's files, as JSON.
IMAGE_FILE = "files.json"
# The kernels of every fake checkpoint made in this process, by the token its image names.
_SAVED_KERNELS: dict[str, dict[str, FakeKernel]] = {}


def _steps(program: Program) -> Iterator[_Step]:
    text = program.source.decode("utf-8", errors="replace")
    python = program.language is Language.PYTHON
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or (python and line.startswith("import ")):
            continue
        printed = (_PY_PRINT if python else _SH_ECHO).fullmatch(line)
        if printed:
            text = printed["text"] if printed["q"] else printed["text"].strip()
            data = text * int(printed.groupdict().get("times") or 1)
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


@dataclass
class _FakeSandbox:
    spec: SandboxSpec
    init: asyncio.Task[tuple[int | None, bool]]
    files: dict[str, bytes]
    contexts: FakeContexts


@dataclass
class _FakeImage:
    files: dict[str, bytes]
    kernels: dict[str, FakeKernel]


class FakeSandboxRuntime(SandboxRuntime):
    """Its checkpoints are real folders (one JSON file of the sandbox's files) under
    `image_dir`, so that they travel through an image store as runsc's do; by default a
    temporary folder, removed when the process ends."""

    def __init__(self, image_dir: Path | None = None) -> None:
        self._programmed: dict[bytes, FakeBehaviour] = {}
        self._sandboxes: dict[str, _FakeSandbox] = {}
        self._image_dir = image_dir
        self.live: set[str] = set()
        self.runs: list[tuple[SandboxSpec, Program]] = []
        self.problems: list[str] = []
        # The host the fake pretends to run on: tests set False for one without cgroups.
        self.cgroups = True
        # Warm sandboxes: their language while unused; the scripts they ran; what tests steer
        # (starts that fail, starts held until released).
        self.warm: dict[str, Language] = {}
        self.warm_runs: list[tuple[str, Program]] = []
        self.warm_starts: list[SandboxSpec] = []
        self.failing_warm_starts = 0
        self.warm_gate = asyncio.Event()
        self.warm_gate.set()
        # Restores, in order (a template's copies, forks, restored sandboxes): id and image.
        self.restores: list[tuple[str, str]] = []

    def program(self, source: bytes, behaviour: FakeBehaviour) -> None:
        self._programmed[source] = behaviour

    @property
    def identity(self) -> dict[str, str]:
        return {"runtime": "fake", "version": "0", "rootfs": "fake"}

    async def readiness(self) -> list[str]:
        return list(self.problems)

    def limit_layers(self) -> dict[str, list[str]]:
        return limit_layers(self.cgroups)

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
            # Killed by the kernel's SIGKILL, as a real out-of-memory kill reports it.
            return (137 if behaviour.oom_killed else behaviour.exit_code), behaviour.oom_killed
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


    # Long-lived sandboxes: the init plays its program (or idles, for an argv program) in a
    # task; files live in a dict; a checkpoint keeps the files and ends the task.

    async def launch(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> None:
        self._launch(spec, program, sink, _FakeImage(files={}, kernels={}))

    def _launch(
        self, spec: SandboxSpec, program: Program, sink: OutputSink, image: _FakeImage
    ) -> None:
        if spec.sandbox_id in self._sandboxes:
            raise RuntimeFailure(f"sandbox {spec.sandbox_id} already exists")
        body = self._play(program, sink) if program.language else _idle()
        self._sandboxes[spec.sandbox_id] = _FakeSandbox(
            spec, asyncio.ensure_future(body), dict(image.files), FakeContexts(image.kernels)
        )
        self.live.add(spec.sandbox_id)

    async def wait(self, sandbox_id: str) -> Outcome:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            return Outcome(exit_code=None)
        started = time.monotonic()
        try:
            exit_code, oom = await asyncio.shield(sandbox.init)
        except asyncio.CancelledError:
            if sandbox.init.cancelled():
                return Outcome(exit_code=None, duration_ms=_ms_since(started))
            raise
        return Outcome(exit_code=exit_code, oom_killed=oom, duration_ms=_ms_since(started))

    async def exec(
        self, sandbox_id: str, program: Program, sink: OutputSink, stdin: bytes, timeout_s: float
    ) -> Outcome:
        self._running(sandbox_id)
        return await self._play_within(program, sink, timeout_s)

    async def _play_within(self, program: Program, sink: OutputSink, timeout_s: float) -> Outcome:
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                exit_code, oom = await self._play(program, sink)
        except TimeoutError:
            return Outcome(exit_code=None, timed_out=True, duration_ms=_ms_since(started))
        return Outcome(exit_code=exit_code, oom_killed=oom, duration_ms=_ms_since(started))

    async def start_warm(
        self, spec: SandboxSpec, language: Language, preimport: tuple[str, ...]
    ) -> None:
        self.warm_starts.append(spec)
        await self.warm_gate.wait()
        if self.failing_warm_starts > 0:
            self.failing_warm_starts -= 1
            raise RuntimeFailure("the fake was told to fail this warm start")
        self._launch(spec, Program(language=None, argv=("idle",)), _Nowhere(),
                     _FakeImage(files={}, kernels={}))
        self.warm[spec.sandbox_id] = language

    async def run_warm(
        self, sandbox_id: str, program: Program, sink: OutputSink, timeout_s: float
    ) -> Outcome:
        self._running(sandbox_id)
        if self.warm.pop(sandbox_id, None) is not program.language:
            raise RuntimeFailure(f"sandbox {sandbox_id} is not warm for {program.language}")
        self.warm_runs.append((sandbox_id, program))
        return await self._play_within(program, sink, timeout_s)

    @property
    def image_dir(self) -> Path:
        if self._image_dir is None:
            self._image_dir = Path(tempfile.mkdtemp(prefix="sandbox-fake-images-"))
            atexit.register(shutil.rmtree, self._image_dir, ignore_errors=True)
        self._image_dir.mkdir(parents=True, exist_ok=True)
        return self._image_dir

    async def checkpoint(self, sandbox_id: str) -> str:
        sandbox = self._running(sandbox_id)
        image = self.image_dir / sandbox_id
        shutil.rmtree(image, ignore_errors=True)
        _save(sandbox, image)
        await self._stop(sandbox_id)
        return str(image)

    async def snapshot(self, sandbox_id: str, image: str) -> int:
        sandbox = self._running(sandbox_id)
        _save(sandbox, Path(image))
        return sum(len(data) for data in sandbox.files.values())

    async def restore(self, spec: SandboxSpec, image: str, sink: OutputSink) -> None:
        try:
            saved = json.loads((Path(image) / IMAGE_FILE).read_text())
            kernels = _SAVED_KERNELS[saved["kernels"]]
        except (OSError, ValueError, KeyError) as error:
            raise RuntimeFailure(f"no usable checkpoint image at {image}: {error}") from None
        files = {path: base64.b64decode(data) for path, data in saved["files"].items()}
        # Restored as many times as asked, each restore with its own copy of the state.
        copy = _FakeImage(files, {key: kernel.saved() for key, kernel in kernels.items()})
        self._launch(spec, Program(language=None, argv=("idle",)), sink, copy)
        self.restores.append((spec.sandbox_id, image))

    async def discard_checkpoint(self, image: str) -> None:
        path = Path(image)
        if path.parent == self.image_dir:
            shutil.rmtree(path, ignore_errors=True)

    async def destroy(self, sandbox_id: str) -> None:
        await self._stop(sandbox_id)
        if self._image_dir is not None:
            shutil.rmtree(self._image_dir / sandbox_id, ignore_errors=True)

    async def _stop(self, sandbox_id: str) -> None:
        self.warm.pop(sandbox_id, None)
        sandbox = self._sandboxes.pop(sandbox_id, None)
        self.live.discard(sandbox_id)
        if sandbox is not None:
            sandbox.contexts.close()
        if sandbox is not None and not sandbox.init.done():
            sandbox.init.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sandbox.init

    async def write_file(self, sandbox_id: str, path: str, chunks: AsyncIterable[bytes]) -> int:
        self._running(sandbox_id)
        received = bytearray()
        async for chunk in chunks:
            received += chunk
        # Stored only once whole, as a real sandbox renames a finished upload into place.
        self._running(sandbox_id).files[path] = bytes(received)
        return len(received)

    @contextlib.asynccontextmanager
    async def read_file(
        self, sandbox_id: str, path: str, limit_bytes: int
    ) -> AsyncIterator[OpenedFile]:
        files = self._running(sandbox_id).files
        if path not in files:
            raise FileNotFoundInSandbox(f"no file {path} in the sandbox")
        data = files[path]
        if len(data) > limit_bytes:
            raise PayloadTooLarge(f"{path} is larger than {limit_bytes} bytes")
        yield OpenedFile(len(data), _chunks_of(data))

    async def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        prefix = path.rstrip("/") + "/"
        files = self._running(sandbox_id).files
        return [
            FileEntry(name=name[len(prefix):], kind="file", size=len(data), modified_at=0.0)
            for name, data in sorted(files.items())
            if name.startswith(prefix) and "/" not in name[len(prefix):]
        ]

    # Code contexts: see fake_contexts.py for the language their cells are written in.

    async def start_context(self, sandbox_id: str, context: CodeContext) -> None:
        self._running(sandbox_id).contexts.start(context)

    async def list_contexts(self, sandbox_id: str) -> list[CodeContext]:
        return self._running(sandbox_id).contexts.listed()

    async def run_cell(
        self, sandbox_id: str, context_id: str, code: str, limits: CellLimits, sink: CellSink
    ) -> CellOutcome:
        return await self._running(sandbox_id).contexts.run(context_id, code, limits, sink)

    async def interrupt_context(self, sandbox_id: str, context_id: str) -> None:
        self._running(sandbox_id).contexts.interrupt(context_id)

    async def restart_context(self, sandbox_id: str, context_id: str) -> None:
        self._running(sandbox_id).contexts.restart(context_id)

    async def stop_context(self, sandbox_id: str, context_id: str) -> None:
        self._running(sandbox_id).contexts.stop(context_id)

    async def running_ids(self) -> set[str]:
        return {key for key, box in self._sandboxes.items() if not box.init.done()}

    async def leftover_ids(self) -> set[str]:
        images = ({entry.name for entry in self._image_dir.iterdir()}
                  if self._image_dir is not None and self._image_dir.is_dir() else set())
        return set(self._sandboxes) | images

    def _running(self, sandbox_id: str) -> _FakeSandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.init.done():
            raise RuntimeFailure(f"sandbox {sandbox_id} is not running")
        return sandbox


async def _chunks_of(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), FILE_CHUNK_BYTES):
        yield bytes(view[start:start + FILE_CHUNK_BYTES])
        await asyncio.sleep(0)  # as a real transfer would, it lets others run between chunks
class _Nowhere(OutputSink):
    async def write(self, stream: Stream, data: bytes) -> None:
        return None


async def _idle() -> tuple[int | None, bool]:
    await asyncio.Event().wait()
    return 0, False


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _save(sandbox: _FakeSandbox, image: Path) -> None:
    """A sandbox's files into the image folder as JSON. Kernels are objects: kept in this
    process under a token the image names (the instances of the multi-instance unit tests
    share the process, as runsc's images hold the kernels' memory)."""
    image.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    _SAVED_KERNELS[token] = sandbox.contexts.saved()
    (image / IMAGE_FILE).write_text(json.dumps({
        "files": {path: base64.b64encode(data).decode() for path, data in sandbox.files.items()},
        "kernels": token}))
