"""`RunscSandboxRuntime`: the SandboxRuntime port on real gVisor."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from sandbox.adapters import limit_layers
from sandbox.adapters.private import private_folder, private_tree_files
from sandbox.adapters.runsc import cgroups, files, memory, oci
from sandbox.adapters.runsc.bundles import NO_MESSAGE, Bundles, checked
from sandbox.adapters.runsc.cli import RUNSC_ERROR_EXIT, Runsc
from sandbox.adapters.runsc.process import Pipe, finish_pumps, pump, spawn, wait_or_kill
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.ids import ID_PATTERN
from sandbox.domain.model import IDLE, FileEntry, Outcome, Program, SandboxSpec, Stream
from sandbox.domain.ports import OutputSink, SandboxRuntime
from sandbox.settings import Settings

log = structlog.get_logger(__name__)

KILL_GRACE_S = 5.0
EXEC_DRAIN_GRACE_S = 0.3
START_POLLS = 3000
STOP_POLLS = 200
# After a failed checkpoint: long enough for an ended sandbox to show as stopped, short enough
# not to hold up one that runs on.
FAILED_CHECKPOINT_POLLS = 40
FILE_CALL_TIMEOUT_S = 60.0
# How runsc reports a sandbox whose processes were killed: the shell's 128 + SIGKILL.
KILLED_EXIT = 128 + signal.SIGKILL


@dataclass
class _Supervised:
    process: asyncio.subprocess.Process
    pumps: list[asyncio.Task[None]]


class CgroupsRequired(RuntimeFailure):
    """The operator asked for cgroups (SANDBOX_REQUIRE_CGROUPS) and the host has none."""


class RunscSandboxRuntime(SandboxRuntime):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._runsc = Runsc(settings.runsc_path, settings.state_dir / "runsc",
                            settings.runsc_platform)
        self._bundles = Bundles(settings.state_dir / "bundles", settings.rootfs_dir)
        self._rootfs = settings.rootfs_dir
        self._checkpoints = settings.checkpoints
        self._cgroups: cgroups.SandboxCgroups = cgroups.NoCgroups()
        self._version = ""
        self._live: set[str] = set()
        # The runsc processes (and their pipes' readers) of long-lived sandboxes, by id.
        self._supervised: dict[str, _Supervised] = {}
        # Holds the memory limit where no cgroup does (started only without cgroups).
        self._memory_watch = memory.MemoryWatch(self._runsc.memory_usage, self._runsc.kill_all)

    async def start(self) -> None:
        await asyncio.to_thread(self._make_state_private)
        self._cgroups = cgroups.detect(self._cgroup_parent())
        self._require_cgroups()
        self._runsc.ignore_cgroups = not self._cgroups.enabled
        self._version = await self._runsc.version()
        log.info("runsc.ready", version=self._version, cgroups=type(self._cgroups).__name__,
                 rootfs=str(self._rootfs), rootfs_identity=self._rootfs_identity(),
                 limits=self.limit_layers())
        weakened = limit_layers.weakened(self.limit_layers())
        if weakened and isinstance(self._cgroups, cgroups.NoCgroups):
            log.warning("runsc.limits_weakened", reason=self._cgroups.reason, limits=weakened,
                        hint="set SANDBOX_REQUIRE_CGROUPS=true to refuse to start so")

    def _require_cgroups(self) -> None:
        if self._settings.require_cgroups and isinstance(self._cgroups, cgroups.NoCgroups):
            message = (f"SANDBOX_REQUIRE_CGROUPS is true but {self._cgroups.reason}: no CPU "
                       "quota and only a polled memory limit would hold sandboxes")
            log.error("runsc.cgroups_required", reason=self._cgroups.reason)
            raise CgroupsRequired(message)

    def limit_layers(self) -> dict[str, list[str]]:
        return limit_layers.limit_layers(self._cgroups.enabled)

    def _make_state_private(self) -> None:
        """The state folder and what is in it are the server's user's alone, at every start:
        bundles hold sessions' env values, checkpoints their memory."""
        state = self._settings.state_dir
        for folder in (state, self._runsc.root, self._bundles.root, state / "packages",
                       self._checkpoints):
            private_folder(folder)
        private_tree_files(self._checkpoints)

    def _cgroup_parent(self) -> str:
        """One cgroup parent per state folder, so two servers (or test runs) on one host
        never take each other's sandboxes for leftovers."""
        if self._settings.cgroup_parent:
            return self._settings.cgroup_parent
        digest = hashlib.sha256(str(self._settings.state_dir.resolve()).encode()).hexdigest()
        return f"gvisor-sandbox-{digest[:10]}"

    async def close(self) -> None:
        """Sandboxes outlive the runtime object: the service suspends what it manages before
        this, an ephemeral run cleans up after itself, and the next start reconciles the
        rest. Only the readers of the pipes end here."""
        self._memory_watch.close()
        for sandbox_id in list(self._supervised):
            supervised = self._supervised.pop(sandbox_id)
            for task in supervised.pumps:
                task.cancel()

    @property
    def identity(self) -> dict[str, str]:
        return {"runtime": "runsc", "version": self._version, "rootfs": self._rootfs_identity()}

    def _rootfs_identity(self) -> str:
        try:
            return Path(f"{self._rootfs}.identity").read_text().strip()
        except OSError:
            return ""

    async def readiness(self) -> list[str]:
        problems = []
        if not self._version:
            problems.append(f"runsc at {self._runsc.path!r} did not answer --version")
        if not (self._rootfs / "usr/bin/python3").exists():
            problems.append(f"rootfs {self._rootfs} has no usr/bin/python3 (run make rootfs)")
        if not self._rootfs_identity():
            problems.append(f"rootfs {self._rootfs} has no identity file beside it")
        if not os.access(self._bundles.root, os.W_OK):
            problems.append(f"state folder {self._bundles.root} is not writable")
        return problems

    # What the benchmark times as bare runsc: the same bundle, the same flags.

    def command(self, *args: str, log_file: Path | None = None) -> list[str]:
        return self._runsc.command(*args, log_file=log_file)

    def write_bundle(self, spec: SandboxSpec, program: Program) -> Path:
        memory_bytes = spec.limits.memory_mb * 1024 * 1024
        cgroups_path = self._cgroups.create(checked(spec.sandbox_id), memory_bytes)
        return self._bundles.write(spec, program, cgroups_path)

    def remove_bundle(self, sandbox_id: str) -> None:
        self._bundles.remove(sandbox_id)
        self._cgroups.remove(sandbox_id)

    # Removing folders can take long (a checkpoint holds up to the memory limit, maybe on a
    # mounted bucket): it runs in a worker thread, never on the event loop.

    async def _remove_bundle(self, sandbox_id: str) -> None:
        self._cgroups.remove(sandbox_id)
        await asyncio.to_thread(self._bundles.remove, sandbox_id)

    async def _remove_image(self, image: Path) -> None:
        await asyncio.to_thread(shutil.rmtree, image, ignore_errors=True)

    # One script in a sandbox made for it and gone afterwards ---------------------------

    async def run(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> Outcome:
        sandbox_id = spec.sandbox_id
        self._live.add(sandbox_id)
        process: asyncio.subprocess.Process | None = None
        try:
            bundle = self.write_bundle(spec, program)
            started = time.monotonic()
            process, stdout, stderr = await spawn(self._runsc.command(
                "run", "--bundle", str(bundle), sandbox_id,
                log_file=self._bundles.fresh_log_file(sandbox_id),
            ))
            return await self._supervise(spec, process, stdout, stderr, sink, started)
        finally:
            cleanup = asyncio.ensure_future(self._destroy(sandbox_id, process))
            try:
                await asyncio.shield(cleanup)
            except asyncio.CancelledError:
                # Cancelled (a client went away): finish the cleanup, then let it propagate.
                await cleanup
                raise

    async def _supervise(
        self,
        spec: SandboxSpec,
        process: asyncio.subprocess.Process,
        stdout: Pipe,
        stderr: Pipe,
        sink: OutputSink,
        started: float,
    ) -> Outcome:
        pumps = [
            asyncio.create_task(pump(stdout, Stream.STDOUT, sink)),
            asyncio.create_task(pump(stderr, Stream.STDERR, sink)),
        ]
        timed_out = False
        self._watch_memory(spec.sandbox_id, spec.limits.memory_mb * 1024 * 1024)
        try:
            async with asyncio.timeout(spec.limits.timeout_s):
                await process.wait()
        except TimeoutError:
            timed_out = True
        finally:
            self._memory_watch.stop(spec.sandbox_id)
            if process.returncode is None:
                # Time is up (or the caller went away): end every process of the sandbox.
                await self._runsc.kill_all(spec.sandbox_id)
                await wait_or_kill(process, KILL_GRACE_S)
            await finish_pumps(pumps)
        duration_ms = int((time.monotonic() - started) * 1000)
        if timed_out:
            return Outcome(exit_code=None, timed_out=True, duration_ms=duration_ms)
        exit_code = process.returncode
        assert exit_code is not None
        self._raise_on_runsc_error(spec.sandbox_id, exit_code)
        return self._ended(spec.sandbox_id, exit_code, duration_ms)

    def _raise_on_runsc_error(self, sandbox_id: str, exit_code: int) -> None:
        """Exit code 128 is runsc's own failure when its log says so; else the script's."""
        if exit_code != RUNSC_ERROR_EXIT:
            return
        message = self._bundles.logged_error(sandbox_id)
        if message != NO_MESSAGE:
            log.error("runsc.failed", message=message)
            raise RuntimeFailure(f"runsc failed: {message}")

    def _ended(
        self, sandbox_id: str, exit_code: int, duration_ms: int, oom_kills_before: int = 0
    ) -> Outcome:
        """Out of memory only when the sandbox was killed (runsc reports 128 + SIGKILL) and a
        memory layer says it killed it: the kernel's OOM killer in the sandbox's cgroup since
        `oom_kills_before`, or the memory watch. A script that exits by itself, with any
        status, 137 included, keeps its status and no verdict."""
        oom = exit_code == KILLED_EXIT and self._killed_for_memory(sandbox_id, oom_kills_before)
        return Outcome(exit_code=exit_code, oom_killed=oom, duration_ms=duration_ms)

    def _killed_for_memory(self, sandbox_id: str, oom_kills_before: int) -> bool:
        return self._memory_watch.killed(sandbox_id) or (
            self._cgroups.oom_kills(sandbox_id) > oom_kills_before
        )

    async def _destroy(
        self, sandbox_id: str, process: asyncio.subprocess.Process | None = None
    ) -> None:
        """Leave nothing behind: container, processes, pipes, cgroups, bundle, checkpoint."""
        await self._runsc.end(sandbox_id)
        if process is not None and process.returncode is None:
            await wait_or_kill(process, KILL_GRACE_S)
        await self._end_supervision(sandbox_id)
        await self._remove_bundle(sandbox_id)
        await self._remove_image(self._checkpoints / sandbox_id)
        self._memory_watch.forget(sandbox_id)
        self._live.discard(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        await self._destroy(checked(sandbox_id))

    # Long-lived sandboxes ---------------------------------------------------------------

    async def launch(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> None:
        sandbox_id = spec.sandbox_id
        self._live.add(sandbox_id)
        try:
            bundle = self.write_bundle(spec, program)
            await self._start_supervised(
                sandbox_id, sink, "run", "--bundle", str(bundle), sandbox_id
            )
        except BaseException:
            await self._destroy(sandbox_id)
            raise

    async def restore(self, spec: SandboxSpec, image: str, sink: OutputSink) -> None:
        sandbox_id = checked(spec.sandbox_id)
        self._live.add(sandbox_id)
        try:
            if not self._bundles.exists(sandbox_id):
                # Restored on another instance, or after the state folder was lost: the
                # process comes from the image, the bundle only gives mounts and limits.
                self.write_bundle(spec, IDLE)
            else:
                self._cgroups.create(sandbox_id, spec.limits.memory_mb * 1024 * 1024)
            await self._start_supervised(
                sandbox_id, sink, "restore", "--image-path", image,
                "--bundle", str(self._bundles.path(sandbox_id)), sandbox_id,
            )
        except BaseException:
            await self._destroy(sandbox_id)
            raise

    async def _start_supervised(self, sandbox_id: str, sink: OutputSink, *args: str) -> None:
        """Start `runsc run` or `restore` in the foreground, as the sandbox's supervisor: its
        exit code is the init's own, which `runsc wait` loses when the init ends quickly.
        Returns once the sandbox runs (or already ended)."""
        log_file = self._bundles.fresh_log_file(sandbox_id)
        process, stdout, stderr = await spawn(self._runsc.command(*args, log_file=log_file))
        self._supervised[sandbox_id] = _Supervised(process, [
            asyncio.create_task(pump(stdout, Stream.STDOUT, sink)),
            asyncio.create_task(pump(stderr, Stream.STDERR, sink)),
        ])
        self._watch_memory(sandbox_id, self._bundles.memory_bytes(sandbox_id))
        for _poll in range(START_POLLS):
            if process.returncode is not None or await self._runsc.is_running(sandbox_id):
                break
            await asyncio.sleep(0.02)
        else:
            raise RuntimeFailure(f"runsc {args[0]} did not start the sandbox in time")
        message = self._bundles.logged_error(sandbox_id)
        if process.returncode == RUNSC_ERROR_EXIT and message != NO_MESSAGE:
            raise RuntimeFailure(f"runsc {args[0]} failed: {message}")

    async def wait(self, sandbox_id: str) -> Outcome:
        supervised = self._supervised.get(checked(sandbox_id))
        if supervised is None:
            return Outcome(exit_code=None)
        started = time.monotonic()
        await supervised.process.wait()
        self._memory_watch.stop(sandbox_id)
        await finish_pumps(supervised.pumps)
        exit_code = supervised.process.returncode
        assert exit_code is not None
        return self._ended(sandbox_id, exit_code, int((time.monotonic() - started) * 1000))

    async def _end_supervision(self, sandbox_id: str) -> None:
        self._memory_watch.stop(sandbox_id)
        supervised = self._supervised.pop(sandbox_id, None)
        if supervised is not None:
            await wait_or_kill(supervised.process, KILL_GRACE_S)
            await finish_pumps(supervised.pumps)

    async def exec(
        self, sandbox_id: str, program: Program, sink: OutputSink, stdin: bytes, timeout_s: float
    ) -> Outcome:
        process_file, pid_file, *script = self._bundles.exec_files(checked(sandbox_id), program)
        try:
            return await self._supervise_exec(
                sandbox_id, process_file, pid_file, sink, stdin, timeout_s
            )
        finally:
            for made in (process_file, pid_file, *script):
                made.unlink(missing_ok=True)

    async def _supervise_exec(
        self,
        sandbox_id: str,
        process_file: Path,
        pid_file: Path,
        sink: OutputSink,
        stdin: bytes,
        timeout_s: float,
    ) -> Outcome:
        started = time.monotonic()
        oom_kills_before = self._cgroups.oom_kills(sandbox_id)
        process, stdout, stderr = await spawn(
            self._runsc.command("exec", "--process", str(process_file),
                                "--internal-pid-file", str(pid_file), sandbox_id),
            stdin=asyncio.subprocess.PIPE,
        )
        pumps = [
            asyncio.create_task(pump(stdout, Stream.STDOUT, sink)),
            asyncio.create_task(pump(stderr, Stream.STDERR, sink)),
            asyncio.create_task(_feed(process.stdin, stdin)),
        ]
        timed_out = False
        try:
            async with asyncio.timeout(timeout_s):
                await process.wait()
        except TimeoutError:
            timed_out = True
        finally:
            if process.returncode is None:
                await self._kill_exec(sandbox_id, pid_file)
                await wait_or_kill(process, KILL_GRACE_S)
            # A daemon the exec started may hold the pipes; what it writes later is not
            # this exec's output.
            await finish_pumps(pumps, grace_s=EXEC_DRAIN_GRACE_S)
        duration_ms = int((time.monotonic() - started) * 1000)
        if timed_out:
            return Outcome(exit_code=None, timed_out=True, duration_ms=duration_ms)
        exit_code = process.returncode
        assert exit_code is not None
        if exit_code == RUNSC_ERROR_EXIT and not await self._runsc.is_running(sandbox_id):
            if self._killed_for_memory(sandbox_id, oom_kills_before):
                # Passing the memory limit ends the whole sandbox, this exec with it.
                return Outcome(exit_code=KILLED_EXIT, oom_killed=True, duration_ms=duration_ms)
            raise RuntimeFailure(f"sandbox {sandbox_id} is not running")
        return self._ended(sandbox_id, exit_code, duration_ms, oom_kills_before)

    async def _kill_exec(self, sandbox_id: str, pid_file: Path) -> None:
        """End a timed-out exec with its process group (an exec is its group's leader), so
        that what it forked does not run on in the session; what it moved to a session of
        its own (setsid) stays, as a daemon would."""
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        killer = pid_file.with_suffix(".kill.json")
        killer.write_text(json.dumps(oci.group_kill_process(pid)))
        try:
            await self._runsc.quietly("exec", "--process", str(killer), sandbox_id)
        finally:
            killer.unlink(missing_ok=True)
        await self._runsc.quietly("kill", "--pid", str(pid), sandbox_id, "KILL")

    async def checkpoint(self, sandbox_id: str) -> str:
        image = self._checkpoints / checked(sandbox_id)
        await self._remove_image(image)
        # The image holds the sandbox's memory: only root may read it.
        image.mkdir(mode=0o700, parents=True)
        started = time.monotonic()
        code, output = await self._runsc.quietly(
            "checkpoint", "--image-path", str(image), sandbox_id
        )
        if code != 0:
            await self._remove_image(image)
            # runsc ends a sandbox whose image it could not write (a full disk), and may show
            # it as running for a moment: let it settle, so that `running_ids` tells the truth.
            await self._runsc.wait_until_stopped(sandbox_id, FAILED_CHECKPOINT_POLLS)
            raise RuntimeFailure(f"runsc checkpoint failed: {output.strip()[-500:]}")
        image_bytes = await asyncio.to_thread(_seal_image, image)
        # checkpoint can return while the container still shows as running; the same id is
        # reused by restore, so wait for it to stop, then delete it.
        await self._runsc.wait_until_stopped(sandbox_id, STOP_POLLS)
        await self._runsc.end(sandbox_id)
        await self._end_supervision(sandbox_id)
        self._cgroups.remove(sandbox_id)
        self._live.discard(sandbox_id)
        log.info("runsc.checkpointed", ms=int((time.monotonic() - started) * 1000),
                 image_bytes=image_bytes)
        return str(image)

    async def discard_checkpoint(self, image: str) -> None:
        path = Path(image)
        if path.parent == self._checkpoints and ID_PATTERN.match(path.name):
            await self._remove_image(path)

    # Files, by small programs run in the sandbox (its files live in its memory) ---------

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        capture = files.BytesCapture(4096)
        outcome = await self.exec(
            sandbox_id, files.write_program(path), capture, data, FILE_CALL_TIMEOUT_S
        )
        files.raise_for(outcome.exit_code, path)

    async def read_file(self, sandbox_id: str, path: str, limit_bytes: int) -> bytes:
        capture = files.BytesCapture(limit_bytes)
        outcome = await self.exec(
            sandbox_id, files.read_program(path, limit_bytes), capture, b"", FILE_CALL_TIMEOUT_S
        )
        files.raise_for(outcome.exit_code, path, limit_bytes)
        return bytes(capture.stdout)

    async def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        capture = files.BytesCapture(16 * 1024 * 1024)
        outcome = await self.exec(
            sandbox_id, files.list_program(path), capture, b"", FILE_CALL_TIMEOUT_S
        )
        files.raise_for(outcome.exit_code, path)
        return [
            FileEntry(name=name, kind=kind, size=size, modified_at=modified)
            for name, kind, size, modified in json.loads(capture.stdout)
        ]

    # What is on the host, for reconciling ------------------------------------------------

    async def running_ids(self) -> set[str]:
        return {
            entry["id"] for entry in await self._runsc.containers()
            if entry.get("status") == "running"
        }

    async def leftover_ids(self) -> set[str]:
        found = {entry["id"] for entry in await self._runsc.containers()}
        found.update(await asyncio.to_thread(self._bundles.ids))
        found.update(await asyncio.to_thread(_names_in, self._checkpoints))
        found.update(self._cgroups.leftovers())
        return {sandbox_id for sandbox_id in found if ID_PATTERN.match(sandbox_id)}

    def _watch_memory(self, sandbox_id: str, limit_bytes: int) -> None:
        if not self._cgroups.enabled and limit_bytes > 0:
            self._memory_watch.start(sandbox_id, limit_bytes)


def _seal_image(image: Path) -> int:
    """Make every file of a checkpoint image readable by root only (runsc writes them
    world-readable, and they hold the sandbox's memory); return the image's size."""
    size = 0
    for entry in image.iterdir():
        entry.chmod(0o600)
        size += entry.stat().st_size
    return size


def _names_in(folder: Path) -> list[str]:
    return [entry.name for entry in folder.iterdir()]


async def _feed(writer: asyncio.StreamWriter | None, data: bytes) -> None:
    """Give a process its stdin, then close it. One that ended first no longer wants it: its
    stdin may be closed already (uvloop closes it as soon as the process has exited, and a
    write then raises RuntimeError, not a ConnectionError)."""
    if writer is None or writer.is_closing():
        return
    with contextlib.suppress(ConnectionError):
        writer.write(data)
        await writer.drain()
    writer.close()
