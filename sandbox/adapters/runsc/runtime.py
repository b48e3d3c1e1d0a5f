"""`RunscSandboxRuntime`: the SandboxRuntime port on real gVisor."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import os
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import structlog

from sandbox.adapters import limit_layers
from sandbox.adapters.egress.allowance import EgressLimits
from sandbox.adapters.egress.proxy import EgressProxy
from sandbox.adapters.egress.resolver import Resolver
from sandbox.adapters.private import private_folder, private_tree_files
from sandbox.adapters.runsc import cgroups, memory, oci, warm
from sandbox.adapters.runsc.agent_channel import MAIN_TAG, AgentError
from sandbox.adapters.runsc.bundles import NO_MESSAGE, Bundles, checked
from sandbox.adapters.runsc.cli import RUNSC_ERROR_EXIT, Runsc
from sandbox.adapters.runsc.file_errors import file_error
from sandbox.adapters.runsc.housekeeping import Housekeeping
from sandbox.adapters.runsc.kernels import Kernels
from sandbox.adapters.runsc.probe import ReadinessProbe
from sandbox.adapters.runsc.process import Pipe, finish_pumps, pump, spawn, wait_or_kill
from sandbox.adapters.runsc.supervised import Supervised, start_supervised
from sandbox.domain.cells import CellLimits, CellOutcome, CodeContext
from sandbox.domain.egress import EgressPolicy
from sandbox.domain.errors import InvalidRequest, RuntimeFailure
from sandbox.domain.ids import ID_PATTERN, new_sandbox_id
from sandbox.domain.metrics import Metrics
from sandbox.domain.model import (
    IDLE,
    FileEntry,
    Language,
    Outcome,
    Program,
    SandboxSpec,
    Stream,
)
from sandbox.domain.output import OutputCapture
from sandbox.domain.ports import CellSink, OpenedFile, OutputSink, SandboxRuntime
from sandbox.settings import PLATFORMS, Settings

log = structlog.get_logger(__name__)
T = TypeVar("T")

KILL_GRACE_S = 5.0
# An exec's group killed by the agent: a fork bomb on a busy host takes seconds to empty.
EXEC_KILL_GRACE_S = 20.0
STOP_POLLS = 200
# How long the `runsc run` (or `restore`) of a checkpointed sandbox may take to exit.
STOP_TIMEOUT_S = 10.0
# After a failed checkpoint: long enough for an ended sandbox to show as stopped, short enough
# not to hold up one that runs on.
FAILED_CHECKPOINT_POLLS = 40
FILE_CALL_TIMEOUT_S = 60.0
# Beside a checkpoint's image: the platform it was made on.
PLATFORM_FILE = "platform"
# Enough for the largest file at a slow client's pace; past it the transfer is ended.
FILE_TRANSFER_TIMEOUT_S = 600.0
# How long the agent may take to answer: its start (the sandbox booting), a request.
AGENT_START_TIMEOUT_S = 60.0
AGENT_ANSWER_TIMEOUT_S = 30.0
PAUSE_TIMEOUT_S = 5.0
MAX_LISTED = 10_000
# Where the agent's files are on the host: mounted read-only into every managed sandbox.
AGENT_DIR = Path(__file__).parent / "inside"
# What a program that cannot be started exits with, as a shell would say it.
CANNOT_EXECUTE, NOT_FOUND = 126, 127
# How runsc reports a sandbox whose processes were killed: the shell's 128 + SIGKILL.
KILLED_EXIT = 128 + signal.SIGKILL
# The readiness probe's sandbox: small, and quick to give up.
PROBE_TIMEOUT_S = 30.0
PROBE_MEMORY_MB = 128


class CgroupsRequired(RuntimeFailure):
    """The operator asked for cgroups (SANDBOX_REQUIRE_CGROUPS) and the host has none."""


class RunscSandboxRuntime(SandboxRuntime):
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._runsc = Runsc(settings.runsc_path, settings.state_dir / "runsc",
                            settings.runsc_platform, settings.checkpoint_compression)
        self._bundles = Bundles(settings.state_dir / "bundles", settings.rootfs_dir)
        self._rootfs = settings.rootfs_dir
        # Where `runsc checkpoint` writes, on this instance's own disk: the lifecycle then
        # publishes the image to the shared checkpoint folder (an ImageStore).
        self._checkpoints = local_images(settings)
        self._cgroups: cgroups.SandboxCgroups = cgroups.NoCgroups()
        self._version = ""
        self._live: set[str] = set()
        # The runsc processes and agent channels of managed sandboxes, by id.
        self._supervised: dict[str, Supervised] = {}
        # Warm sandboxes not yet given their script, by id.
        self._warm: dict[str, warm.WarmSandbox] = {}
        self._agent_identity = _agent_identity()
        # Holds the memory limit where no cgroup does (started only without cgroups).
        self._memory_watch = memory.MemoryWatch(self._runsc.memory_usage, self._runsc.kill_all,
                                                sentry_pid=self._runsc.sentry_pid)
        self._egress = _egress_proxy(settings, metrics)
        # Container deletions and image removals left off the answers' path.
        self._housekeeping = Housekeeping()
        self._probe = ReadinessProbe(self._probe_sandbox)

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
        """One cgroup parent per state folder (named in it), so two servers (or test runs,
        or a container and its host) never take each other's sandboxes for leftovers."""
        if self._settings.cgroup_parent:
            return self._settings.cgroup_parent
        return cgroups.parent_of(self._settings.state_dir)

    async def close(self) -> None:
        """Sandboxes outlive the runtime object: the service suspends what it manages before
        this, an ephemeral run cleans up after itself, and the next start reconciles the
        rest. Only the readers of the pipes end here."""
        self._memory_watch.close()
        for sandbox_id in list(self._supervised):
            await self._supervised.pop(sandbox_id).detach()
        await self._egress.close_all()
        await self._housekeeping.close()
        if self._cgroups.enabled:
            cgroups.remove_parent_if_unused(self._cgroup_parent())

    @property
    def egress(self) -> EgressProxy:
        return self._egress

    @property
    def identity(self) -> dict[str, str]:
        # Not the platform: each image carries the one it was made on (its `platform` file,
        # published with it and hashed in its manifest), and restore uses that one.
        return {"runtime": "runsc", "version": self._version, "rootfs": self._rootfs_identity(),
                "agent": self._agent_identity}

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
        if not (self._rootfs / oci.AGENT_DIR.lstrip("/")).is_dir():
            problems.append(f"rootfs {self._rootfs} has no {oci.AGENT_DIR} (run make rootfs)")
        if not self._rootfs_identity():
            problems.append(f"rootfs {self._rootfs} has no identity file beside it")
        if self._settings.egress_policy() and not (
                self._rootfs / oci.EGRESS_DIR.lstrip("/")).is_dir():
            problems.append(f"rootfs {self._rootfs} has no {oci.EGRESS_DIR}, which egress "
                            "(SANDBOX_EGRESS_ALLOW) needs (run make rootfs)")
        if not os.access(self._bundles.root, os.W_OK):
            problems.append(f"state folder {self._bundles.root} is not writable")
        if not problems and (problem := await self._probe.problem()):
            problems.append(problem)
        return problems

    async def _probe_sandbox(self) -> str | None:
        """Run `echo ready` in a sandbox of its own; None when it did, else why not."""
        limits = dataclasses.replace(self._settings.default_limits(), timeout_s=PROBE_TIMEOUT_S,
                                     memory_mb=PROBE_MEMORY_MB, output_bytes=1024)
        spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=limits)
        capture = OutputCapture(1024)
        try:
            outcome = await self.run(spec, Program.script(Language.BASH, b"echo ready\n"),
                                     capture)
        except RuntimeFailure as failure:
            return f"a probe sandbox could not run: {failure.message[-300:]}"
        await capture.close()
        said = capture.captured(Stream.STDOUT).text
        if outcome.exit_code != 0 or said != "ready\n":
            return (f"a probe sandbox did not run as it should (exit code {outcome.exit_code}, "
                    f"timed out: {outcome.timed_out}, said {said[:40]!r})")
        return None

    # What the benchmark times as bare runsc: the same bundle, the same flags.

    def command(
        self, *args: str, log_file: Path | None = None, platform: str | None = None
    ) -> list[str]:
        return self._runsc.command(*args, log_file=log_file, platform=platform)

    def write_bundle(self, spec: SandboxSpec, program: Program, managed: bool = False) -> Path:
        memory_bytes = spec.limits.memory_mb * 1024 * 1024
        cgroups_path = self._cgroups.create(checked(spec.sandbox_id), memory_bytes)
        return self._bundles.write(spec, program, cgroups_path, AGENT_DIR if managed else None)

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
        if spec.network_allow:
            return await self._run_with_agent(spec, program, sink)
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
        except RuntimeFailure:
            self._probe.stale()
            raise
        finally:
            await self._destroy_shielded(sandbox_id, process)

    async def _run_with_agent(
        self, spec: SandboxSpec, program: Program, sink: OutputSink
    ) -> Outcome:
        """A one-shot script with an allow-list runs as a managed sandbox would (its relay
        needs the agent), and is gone afterwards all the same."""
        started = time.monotonic()
        try:
            await self.launch(spec, program, sink)
            try:
                async with asyncio.timeout(spec.limits.timeout_s):
                    outcome = await self.wait(spec.sandbox_id)
            except TimeoutError:
                outcome = Outcome(exit_code=None, timed_out=True)
        finally:
            await self._destroy_shielded(spec.sandbox_id)
        if outcome.failure is not None:
            raise RuntimeFailure(f"the sandbox failed: {outcome.failure}")
        return dataclasses.replace(outcome, duration_ms=int((time.monotonic() - started) * 1000))

    async def _destroy_shielded(
        self, sandbox_id: str, process: asyncio.subprocess.Process | None = None
    ) -> None:
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
        await self._housekeeping.settled(sandbox_id)
        supervised = self._supervised.get(sandbox_id)
        if supervised is not None:
            supervised.ending = True  # ended by us: its supervisor must not call it a failure
            # Stop listening first: its pipes closing is then no news worth a warning.
            await supervised.channel.close()
        await self._runsc.end(sandbox_id)
        if process is not None and process.returncode is None:
            await wait_or_kill(process, KILL_GRACE_S)
        await self._end_supervision(sandbox_id)
        self._warm.pop(sandbox_id, None)
        await self._egress.close(sandbox_id)
        await self._remove_bundle(sandbox_id)
        await self._remove_image(self._checkpoints / sandbox_id)
        self._memory_watch.forget(sandbox_id)
        self._live.discard(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        await self._destroy(checked(sandbox_id))

    # Managed sandboxes: the agent is their init -----------------------------------------

    async def launch(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> None:
        if program.language is not None or program.argv:
            await self._launch(spec, program, sink, self._settings.runsc_platform)
        else:  # a session, which mostly waits: its platform, and a zygote for Python execs
            await self._launch(spec, program, sink, self._settings.session_platform,
                               zygote=True)

    async def _launch(
        self, spec: SandboxSpec, program: Program, sink: OutputSink, platform: str,
        zygote: bool = False,
    ) -> None:
        sandbox_id = spec.sandbox_id
        self._live.add(sandbox_id)
        try:
            bundle = self.write_bundle(spec, program, managed=True)
            await self._open_egress(spec)
            supervised = await self._start_agent(
                spec, program, platform, "run", "--bundle", str(bundle), sandbox_id
            )
            await self._started(supervised, supervised.channel.start(AGENT_START_TIMEOUT_S),
                                "run")
            if spec.network_allow:
                await _start_relay(supervised)
            if program.language is not None or program.argv:
                await supervised.channel.spawn(
                    oci.program_argv(program), supervised.env, oci.WORKDIR, sink,
                    AGENT_ANSWER_TIMEOUT_S, main=True,
                )
                supervised.main = True
            elif zygote:  # Python execs are forked from a started interpreter
                await supervised.channel.start_zygote(
                    ["python3", f"{oci.AGENT_DIR}/zygote.py"], supervised.env, oci.WORKDIR,
                    AGENT_ANSWER_TIMEOUT_S,
                )
        except BaseException as error:
            self._failed_start(error)
            await self._destroy(sandbox_id)
            raise

    async def restore(self, spec: SandboxSpec, image: str, sink: OutputSink) -> None:
        sandbox_id = checked(spec.sandbox_id)
        # The container this id had before its checkpoint may still be being deleted.
        await self._housekeeping.settled(sandbox_id)
        self._live.add(sandbox_id)
        try:
            if not self._bundles.exists(sandbox_id):
                # Restored on another instance, or after the state folder was lost: the
                # processes come from the image, the bundle only gives mounts and limits.
                self.write_bundle(spec, Program(language=None), managed=True)
            else:
                self._cgroups.create(sandbox_id, spec.limits.memory_mb * 1024 * 1024)
            # The relay inside went on listening through the checkpoint; it finds a new
            # socket at the same place.
            await self._open_egress(spec)
            supervised = await self._start_agent(
                spec, Program(language=None), _image_platform(image, self._settings),
                "restore", "--image-path", image,
                "--bundle", str(self._bundles.path(sandbox_id)), sandbox_id,
            )
            # Each restore is a new copy of the sandbox (a template's image restores many
            # times): its processes are told, and its zygote re-seeds (see inside/agent.py).
            resumed = supervised.channel.resume(AGENT_START_TIMEOUT_S, secrets.token_hex(16))
            live = await self._started(supervised, resumed, "restore")
            if MAIN_TAG in live:
                supervised.channel.adopt(MAIN_TAG, sink)
                supervised.main = True
            for tag, process in live.items():
                if tag != MAIN_TAG:
                    self._kernels(supervised).adopt(tag, process)
        except BaseException as error:
            self._failed_start(error)
            await self._destroy(sandbox_id)
            raise

    def _failed_start(self, error: BaseException) -> None:
        """runsc failing to start a sandbox may mean it cannot run here any more: the next
        readiness check proves it again with a probe sandbox."""
        if isinstance(error, RuntimeFailure):
            self._probe.stale()

    async def _start_agent(
        self, spec: SandboxSpec, program: Program, platform: str, *args: str
    ) -> Supervised:
        """Start `runsc run` or `restore` in the foreground, as the sandbox's supervisor, with
        the agent's channel on its stdio."""
        sandbox_id = spec.sandbox_id
        log_file = self._bundles.fresh_log_file(sandbox_id)

        async def broken(reason: str) -> None:
            # Only this sandbox pays for its agent: it is ended, and `wait` says why. (While
            # the service ends or checkpoints it, the pipes closing is no news.)
            current = self._supervised.get(sandbox_id)
            if current is None or current.ending:
                return
            log.error("runsc.agent_failed", sandbox_id=sandbox_id, reason=reason)
            await self._runsc.kill_all(sandbox_id)

        supervised = await start_supervised(
            sandbox_id,
            self._runsc.command(*args, log_file=log_file, host_uds=bool(spec.network_allow),
                                platform=platform),
            oci.environment(spec, program), broken,
        )
        supervised.platform = platform
        self._bundles.record_platform(sandbox_id, platform)
        supervised.kernels = Kernels(sandbox_id, supervised.channel, supervised.env,
                                     lambda: self._runsc.kill_all(sandbox_id))
        self._supervised[sandbox_id] = supervised
        self._watch_memory(sandbox_id, self._bundles.memory_bytes(sandbox_id))
        return supervised

    async def _started(self, supervised: Supervised, greeting: Awaitable[T], verb: str) -> T:
        """The agent's first answer; when there is none, runsc's own reason if it gave one."""
        try:
            return await greeting
        except RuntimeFailure:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KILL_GRACE_S):
                    await supervised.process.wait()
            message = self._bundles.logged_error(supervised.sandbox_id)
            if supervised.process.returncode == RUNSC_ERROR_EXIT and message != NO_MESSAGE:
                raise RuntimeFailure(f"runsc {verb} failed: {message}") from None
            raise

    def _agent(self, sandbox_id: str) -> Supervised:
        supervised = self._supervised.get(checked(sandbox_id))
        if supervised is None or supervised.ending or supervised.channel.broken is not None:
            raise RuntimeFailure(f"sandbox {sandbox_id} is not running on this host")
        return supervised

    async def wait(self, sandbox_id: str) -> Outcome:
        supervised = self._supervised.get(checked(sandbox_id))
        if supervised is None:
            return Outcome(exit_code=None)
        started = time.monotonic()
        exit_code: int | None = None
        if supervised.main:
            with contextlib.suppress(RuntimeFailure):
                exit_code = await supervised.channel.wait(MAIN_TAG)
        if exit_code is None:
            await supervised.process.wait()
        self._memory_watch.stop(sandbox_id)
        duration_ms = int((time.monotonic() - started) * 1000)
        if supervised.ending:
            return Outcome(exit_code=None, duration_ms=duration_ms)
        if exit_code is None:
            failure = supervised.channel.broken or "the sandbox's agent ended"
            if self._killed_for_memory(sandbox_id, 0):
                # Passing the memory limit ends the whole sandbox, its agent with it.
                return Outcome(exit_code=KILLED_EXIT, oom_killed=True, duration_ms=duration_ms)
            return Outcome(exit_code=None, duration_ms=duration_ms, failure=failure)
        return self._ended(sandbox_id, exit_code, duration_ms)

    async def _end_supervision(self, sandbox_id: str) -> None:
        self._memory_watch.stop(sandbox_id)
        supervised = self._supervised.pop(sandbox_id, None)
        if supervised is not None:
            await supervised.close(KILL_GRACE_S)

    async def exec(
        self, sandbox_id: str, program: Program, sink: OutputSink, stdin: bytes, timeout_s: float
    ) -> Outcome:
        supervised = self._agent(sandbox_id)
        argv, script = self._bundles.exec_argv(sandbox_id, program)
        env = _with_exec_env(supervised.env, program.env)
        # The zygote has the session's environment and folder: an exec with its own runs as
        # started (the agent then says why when the folder is missing; a forked child cannot).
        own = bool(program.env) or program.cwd is not None
        forked = argv[1] if program.language is Language.PYTHON and not own else None
        oom_kills_before = self._cgroups.oom_kills(sandbox_id)
        started = time.monotonic()
        try:
            tag = await self._started_exec(supervised, supervised.channel.spawn(
                argv, env, program.cwd or oci.WORKDIR, sink, AGENT_ANSWER_TIMEOUT_S,
                stdin=True, forked_script=forked))
        except (AgentError, asyncio.CancelledError) as refused:
            if script is not None:
                script.unlink(missing_ok=True)
            if isinstance(refused, AgentError):
                return await _not_started(refused, sink, started)
            raise
        try:
            return await self._finish_exec(supervised, tag, stdin, timeout_s, started,
                                           oom_kills_before)
        finally:
            if script is not None:
                script.unlink(missing_ok=True)

    async def _started_exec(self, supervised: Supervised, spawning: Awaitable[int]) -> int:
        """The exec's tag once the agent started it. A caller that leaves meanwhile (its
        client went away) must not leave the agent's answer unclaimed, which would break the
        channel and fail the sandbox: the start is waited for, then the exec is ended."""
        spawn = asyncio.ensure_future(spawning)
        try:
            return await asyncio.shield(spawn)
        except asyncio.CancelledError:
            with contextlib.suppress(AgentError, RuntimeFailure):  # then nothing started
                await self._kill_exec(supervised, await spawn)
            raise

    async def _finish_exec(
        self, supervised: Supervised, tag: int, stdin: bytes, timeout_s: float, started: float,
        oom_kills_before: int,
    ) -> Outcome:
        channel = supervised.channel
        feeding = asyncio.create_task(channel.feed(tag, stdin))
        try:
            async with asyncio.timeout(timeout_s):
                exit_code = await channel.wait(tag)
        except TimeoutError:
            await self._kill_exec(supervised, tag)
            return Outcome(exit_code=None, timed_out=True,
                           duration_ms=int((time.monotonic() - started) * 1000))
        except asyncio.CancelledError:
            # The caller went away: the exec ends with its process group.
            await asyncio.shield(self._kill_exec(supervised, tag))
            raise
        except RuntimeFailure:
            if not await self._ended_for_memory(supervised, oom_kills_before):
                raise
            # Passing the memory limit ends the whole sandbox, this exec with it.
            return Outcome(exit_code=KILLED_EXIT, oom_killed=True,
                           duration_ms=int((time.monotonic() - started) * 1000))
        finally:
            feeding.cancel()
        return self._ended(supervised.sandbox_id, exit_code,
                           int((time.monotonic() - started) * 1000), oom_kills_before)

    async def _ended_for_memory(self, supervised: Supervised, oom_kills_before: int) -> bool:
        """Whether the sandbox itself ended, killed for its memory (its agent with it)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KILL_GRACE_S):
                await supervised.process.wait()
        return (supervised.process.returncode is not None
                and self._killed_for_memory(supervised.sandbox_id, oom_kills_before))

    async def _kill_exec(self, supervised: Supervised, tag: int) -> None:
        """End an exec with its process group (what it moved to a session of its own stays,
        as a daemon would). An agent that cannot do that in time fails its sandbox."""
        channel = supervised.channel
        if channel.broken is not None:
            return
        channel.kill(tag)
        try:
            async with asyncio.timeout(EXEC_KILL_GRACE_S):
                await channel.wait(tag)
        except (TimeoutError, RuntimeFailure):
            log.error("runsc.exec_kill_failed", sandbox_id=supervised.sandbox_id)
            await self._runsc.kill_all(supervised.sandbox_id)

    # Code contexts: interpreters the agent keeps (see kernels.py) ------------------------

    def _kernels(self, supervised: Supervised) -> Kernels:
        assert supervised.kernels is not None  # set as soon as the sandbox starts
        return supervised.kernels

    async def start_context(self, sandbox_id: str, context: CodeContext) -> None:
        await self._kernels(self._agent(sandbox_id)).start(context)

    async def list_contexts(self, sandbox_id: str) -> list[CodeContext]:
        return self._kernels(self._agent(sandbox_id)).listed()

    async def run_cell(
        self, sandbox_id: str, context_id: str, code: str, limits: CellLimits, sink: CellSink
    ) -> CellOutcome:
        return await self._kernels(self._agent(sandbox_id)).run(context_id, code, limits, sink)

    async def interrupt_context(self, sandbox_id: str, context_id: str) -> None:
        self._kernels(self._agent(sandbox_id)).interrupt(context_id)

    async def restart_context(self, sandbox_id: str, context_id: str) -> None:
        await self._kernels(self._agent(sandbox_id)).restart(context_id)

    async def stop_context(self, sandbox_id: str, context_id: str) -> None:
        await self._kernels(self._agent(sandbox_id)).stop(context_id)

    # Warm sandboxes: started ahead of a request, spent by one script ----------------------

    async def start_warm(
        self, spec: SandboxSpec, language: Language, preimport: tuple[str, ...]
    ) -> None:
        # Warm sandboxes run scripts: the scripts' platform, and no zygote.
        await self._launch(spec, IDLE, warm.Nowhere(), self._settings.runsc_platform)
        waiting = warm.WarmSandbox(language)
        try:
            if language is Language.PYTHON:
                supervised = self._agent(spec.sandbox_id)
                waiting.sink = warm.RunnerSink()
                waiting.tag = await supervised.channel.spawn(
                    warm.runner_argv(preimport), supervised.env, oci.WORKDIR, waiting.sink,
                    AGENT_ANSWER_TIMEOUT_S, control=True, last=True,
                )
                await warm.until_ready(supervised.channel, waiting.tag, waiting.sink,
                                       AGENT_START_TIMEOUT_S)
        except BaseException:
            await self._destroy(spec.sandbox_id)
            raise
        self._warm[spec.sandbox_id] = waiting

    async def run_warm(
        self, sandbox_id: str, program: Program, sink: OutputSink, timeout_s: float
    ) -> Outcome:
        supervised = self._agent(sandbox_id)
        waiting = self._warm.pop(sandbox_id, None)
        if waiting is None or waiting.language is not program.language:
            raise RuntimeFailure(f"sandbox {sandbox_id} is not waiting for a "
                                 f"{program.language} script")
        self._bundles.write_script(sandbox_id, program)
        oom_kills_before = self._cgroups.oom_kills(sandbox_id)
        started = time.monotonic()
        if waiting.tag is not None and waiting.sink is not None:
            tag = waiting.tag
            await waiting.sink.attach(sink)
            await supervised.channel.control(tag, warm.GO)
        else:
            try:
                tag = await supervised.channel.spawn(oci.program_argv(program), supervised.env,
                                                     oci.WORKDIR, sink, AGENT_ANSWER_TIMEOUT_S,
                                                     last=True)
            except AgentError as refused:
                return await _not_started(refused, sink, started)
        return await self._finish_exec(supervised, tag, b"", timeout_s, started,
                                       oom_kills_before)

    async def checkpoint(self, sandbox_id: str) -> str:
        image = self._checkpoints / checked(sandbox_id)
        await self._housekeeping.settled(sandbox_id)
        await self._remove_image(image)
        # The image holds the sandbox's memory: only root may read it.
        image.mkdir(mode=0o700, parents=True)
        started = time.monotonic()
        supervised = self._supervised.get(sandbox_id)
        await self._quiet(sandbox_id, supervised)
        if supervised is not None:
            supervised.ending = True
        code, output = await self._runsc.quietly(
            "checkpoint", *self._runsc.checkpoint_flags, "--image-path", str(image), sandbox_id
        )
        if code != 0:
            await self._checkpoint_failed(sandbox_id, supervised, image)
            raise RuntimeFailure(f"runsc checkpoint failed: {output.strip()[-500:]}")
        saved = time.monotonic()
        await asyncio.to_thread(_write_platform, image, self._platform_of(sandbox_id, supervised),
                                self._settings)
        image_bytes = await asyncio.to_thread(_seal_image, image)
        await self._until_stopped(sandbox_id, supervised)
        await self._end_supervision(sandbox_id)
        await self._egress.close(sandbox_id)
        self._live.discard(sandbox_id)
        # The stopped container must go before a restore under the same id, which waits for
        # it; the answer need not (deleting a restored container takes a second and more).
        self._housekeeping.later(sandbox_id, self._delete_stopped(sandbox_id))
        log.info("runsc.checkpointed", ms=int((time.monotonic() - started) * 1000),
                 checkpoint_ms=int((saved - started) * 1000), image_bytes=image_bytes)
        return str(image)

    async def _quiet(self, sandbox_id: str, supervised: Supervised | None) -> None:
        """Before a checkpoint: the agent falls silent, and no host-socket connection is open
        (gVisor cannot checkpoint one: the relay inside has closed its own at the pause; the
        proxy's side is closed here). A network interruption."""
        if supervised is not None:
            await self._pause(supervised)
        await self._egress.interrupt(sandbox_id)

    async def _checkpoint_failed(
        self, sandbox_id: str, supervised: Supervised | None, image: Path
    ) -> None:
        if supervised is not None:
            supervised.ending = False
        await self._remove_image(image)
        # runsc ends a sandbox whose image it could not write (a full disk), and may show
        # it as running for a moment: let it settle, so that `running_ids` tells the truth.
        await self._runsc.wait_until_stopped(sandbox_id, FAILED_CHECKPOINT_POLLS)
        if supervised is not None and await self._runsc.is_running(sandbox_id):
            with contextlib.suppress(RuntimeFailure, AgentError):
                await supervised.channel.unpause(AGENT_ANSWER_TIMEOUT_S)

    async def _until_stopped(self, sandbox_id: str, supervised: Supervised | None) -> None:
        """`runsc checkpoint` can return while the container still runs for a moment. The
        `runsc run` (or `restore`) we started exits when it stops: waiting for it costs no
        runsc call; without it (adopted after a restart), runsc is asked until it says so."""
        if supervised is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await supervised.process.wait()
                    return
        await self._runsc.wait_until_stopped(sandbox_id, STOP_POLLS)

    def _platform_of(self, sandbox_id: str, supervised: Supervised | None) -> str:
        """The platform the sandbox runs on; one this server did not start (it came before a
        crash) says it in its bundle ("" when even that is unknown: the scripts')."""
        return (supervised.platform if supervised is not None
                else self._bundles.platform(sandbox_id))

    async def _delete_stopped(self, sandbox_id: str) -> None:
        await self._runsc.delete(sandbox_id)
        self._cgroups.remove(sandbox_id)

    async def snapshot(self, sandbox_id: str, image: str) -> int:
        """`runsc checkpoint --leave-running` between a pause and an unpause of the agent:
        the image holds no half frame, and the sandbox runs on, on the same pipes."""
        supervised = self._agent(sandbox_id)
        started = time.monotonic()
        await self._quiet(sandbox_id, supervised)
        try:
            code, output = await self._runsc.quietly(
                "checkpoint", "--leave-running", *self._runsc.checkpoint_flags,
                "--image-path", image, sandbox_id,
            )
        finally:
            with contextlib.suppress(RuntimeFailure, AgentError):
                await supervised.channel.unpause(AGENT_ANSWER_TIMEOUT_S)
        if code != 0:
            raise RuntimeFailure(f"runsc checkpoint --leave-running failed: "
                                 f"{output.strip()[-500:]}")
        await asyncio.to_thread(_write_platform, Path(image),
                                self._platform_of(sandbox_id, supervised), self._settings)
        image_bytes = await asyncio.to_thread(_seal_image, Path(image))
        log.info("runsc.snapshotted", sandbox_id=sandbox_id, image_bytes=image_bytes,
                 ms=int((time.monotonic() - started) * 1000))
        return image_bytes

    async def _pause(self, supervised: Supervised) -> None:
        """Quiet the agent so that no frame is cut by the checkpoint. One that does not
        answer is checkpointed anyway: after a restore, the stream is found again."""
        try:
            await supervised.channel.pause(PAUSE_TIMEOUT_S)
        except (RuntimeFailure, AgentError) as error:
            log.warning("runsc.agent_pause_failed", sandbox_id=supervised.sandbox_id,
                        error=str(error))

    async def discard_checkpoint(self, image: str) -> None:
        """Removed in the background (a restore's answer need not wait for it); the
        sandbox's next checkpoint or destruction waits for it."""
        path = Path(image)
        if path.parent == self._checkpoints and ID_PATTERN.match(path.name):
            self._housekeeping.later(path.name, self._remove_image(path))

    # Files, moved by the agent with the sandbox user's rights ----------------------------

    async def write_file(self, sandbox_id: str, path: str, chunks: AsyncIterable[bytes]) -> int:
        channel = self._agent(sandbox_id).channel
        try:
            return await channel.write_file(path, aiter(chunks), FILE_TRANSFER_TIMEOUT_S)
        except AgentError as refused:
            raise file_error(refused, path) from None

    @contextlib.asynccontextmanager
    async def read_file(
        self, sandbox_id: str, path: str, limit_bytes: int
    ) -> AsyncIterator[OpenedFile]:
        channel = self._agent(sandbox_id).channel
        try:
            async with channel.read_file(path, limit_bytes, FILE_TRANSFER_TIMEOUT_S) as (
                info, chunks,
            ):
                yield OpenedFile(info.size, _exactly(info.size, chunks, path, limit_bytes))
        except AgentError as refused:
            raise file_error(refused, path, limit_bytes) from None

    async def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        channel = self._agent(sandbox_id).channel
        try:
            entries = await channel.list_files(path, MAX_LISTED, FILE_CALL_TIMEOUT_S)
        except AgentError as refused:
            raise file_error(refused, path) from None
        return sorted(entries, key=lambda entry: entry.name)

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

    async def _open_egress(self, spec: SandboxSpec) -> None:
        if spec.network_allow:
            await self._egress.open(spec.sandbox_id, EgressPolicy.parse(spec.network_allow),
                                    self._bundles.egress_dir(spec.sandbox_id), oci.RELAY_UID)


def local_images(settings: Settings) -> Path:
    """The folder of images `runsc checkpoint` writes, before they are published."""
    return settings.state_dir / "images"


def _egress_proxy(settings: Settings, metrics: Metrics | None) -> EgressProxy:
    limits = EgressLimits(
        max_connections=settings.egress_max_connections,
        connections_per_s=settings.egress_connections_per_s,
        max_bytes=settings.egress_max_bytes,
        idle_timeout_s=settings.egress_idle_timeout_s,
        total_timeout_s=settings.egress_connection_timeout_s,
    )
    resolver = Resolver(settings.egress_host_map(), limits.resolve_timeout_s)
    # The operator's list holds at every connection, also for a sandbox restored after the
    # list was narrowed.
    return EgressProxy(limits, resolver, metrics, operator=settings.egress_policy())


async def _start_relay(supervised: Supervised) -> None:
    try:
        await supervised.channel.start_relay(oci.relay_argv(), AGENT_ANSWER_TIMEOUT_S)
    except AgentError as refused:
        raise RuntimeFailure(f"the sandbox's egress relay did not start: {refused.message}"
                             ) from None


def _with_exec_env(base: list[str], extra: tuple[tuple[str, str], ...]) -> list[str]:
    """The sandbox's environment with an exec's own variables winning. Each name once: with
    a name twice, C's getenv would see the first and Python's os.environ the last."""
    merged = dict(item.split("=", 1) for item in base)
    merged.update(extra)
    return [f"{key}={value}" for key, value in merged.items()]


async def _not_started(refused: AgentError, sink: OutputSink, started: float) -> Outcome:
    """A program that cannot be started ends as a shell would report it: its reason on
    stderr, 127 when it does not exist, 126 when it cannot be executed."""
    await sink.write(Stream.STDERR, f"{refused.message}\n".encode())
    code = NOT_FOUND if refused.code == errno.ENOENT else CANNOT_EXECUTE
    return Outcome(exit_code=code, duration_ms=int((time.monotonic() - started) * 1000))


async def _exactly(
    size: int, chunks: AsyncIterator[bytes], path: str, limit_bytes: int
) -> AsyncIterator[bytes]:
    """The file's bytes, exactly as many as its size said (a file that grows or shrinks while
    it is read is a failed transfer, never a wrong one)."""
    sent = 0
    try:
        async for chunk in chunks:
            sent += len(chunk)
            if sent > size:
                raise InvalidRequest(f"{path} grew while it was read; read it again")
            yield chunk
    except AgentError as refused:
        raise file_error(refused, path, limit_bytes) from None
    if sent != size:
        raise InvalidRequest(f"{path} shrank while it was read; read it again")


def _agent_identity() -> str:
    """A checkpoint holds the agent in its memory: one made with another agent is refused."""
    digest = hashlib.sha256()
    for source in sorted(AGENT_DIR.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def _write_platform(image: Path, platform: str, settings: Settings) -> None:
    """Beside the image: the platform it was made on, for its restores (see _image_platform)."""
    (image / PLATFORM_FILE).write_text(platform or settings.runsc_platform)


def _image_platform(image: str, settings: Settings) -> str:
    """The platform a checkpoint was made on, which its restore must use (one made on
    systrap restores on ptrace with its agent dead). Older images were made on systrap, the
    scripts' platform."""
    try:
        named = (Path(image) / PLATFORM_FILE).read_text().strip()
    except OSError:
        return settings.runsc_platform
    return named if named in PLATFORMS else settings.runsc_platform


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
