"""`RunscSandboxRuntime`: the SandboxRuntime port on real gVisor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import structlog

from sandbox.adapters.runsc import cgroups, oci
from sandbox.adapters.runsc.process import finish_pumps, pump, wait_or_kill
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.ids import ID_PATTERN
from sandbox.domain.model import Outcome, Program, SandboxSpec, Stream
from sandbox.domain.ports import OutputSink, SandboxRuntime
from sandbox.settings import Settings

log = structlog.get_logger(__name__)

KILL_GRACE_S = 5.0
RUNSC_ERROR_EXIT = 128


class RunscSandboxRuntime(SandboxRuntime):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._runsc = settings.runsc_path
        self._runsc_root = settings.state_dir / "runsc"
        self._bundles = settings.state_dir / "bundles"
        self._rootfs = settings.rootfs_dir
        self._cgroups: cgroups.SandboxCgroups = cgroups.NoCgroups()
        self._version = ""
        self._live: set[str] = set()

    async def start(self) -> None:
        for folder in (self._runsc_root, self._bundles):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cgroups = cgroups.detect(self._settings.cgroup_parent)
        self._version = await self._read_version()
        log.info("runsc.ready", version=self._version, cgroups=type(self._cgroups).__name__,
                 rootfs=str(self._rootfs), rootfs_identity=self._rootfs_identity())
        await self._remove_orphans()

    async def close(self) -> None:
        for sandbox_id in list(self._live):
            await self._destroy(sandbox_id)

    @property
    def identity(self) -> dict[str, str]:
        return {"runsc": self._version, "rootfs": self._rootfs_identity()}

    async def readiness(self) -> list[str]:
        problems = []
        if not self._version:
            problems.append(f"runsc at {self._runsc!r} did not answer --version")
        if not (self._rootfs / "usr/bin/python3").exists():
            problems.append(f"rootfs {self._rootfs} has no usr/bin/python3 (run make rootfs)")
        if not self._rootfs_identity():
            problems.append(f"rootfs {self._rootfs} has no identity file beside it")
        if not os.access(self._bundles, os.W_OK):
            problems.append(f"state folder {self._bundles} is not writable")
        return problems

    def command(self, *args: str, log_file: Path | None = None) -> list[str]:
        """The full runsc argument list: global flags first, never through a shell."""
        argv = [
            self._runsc,
            f"--root={self._runsc_root}",
            "--network=none",
            "--overlay2=root:memory",
            f"--platform={self._settings.runsc_platform}",
        ]
        if not self._cgroups.enabled:
            argv.append("--ignore-cgroups")
        if log_file is not None:
            argv.append(f"--log={log_file}")
        return [*argv, *args]

    def write_bundle(self, spec: SandboxSpec, program: Program) -> Path:
        sandbox_id = _checked(spec.sandbox_id)
        bundle = self._bundles / sandbox_id
        input_dir = bundle / "input"
        bundle.mkdir(mode=0o711)
        input_dir.mkdir(mode=0o755)
        if program.language is not None:
            script = input_dir / oci.script_name(program.language)
            script.write_bytes(program.source)
            script.chmod(0o644)
        memory_bytes = spec.limits.memory_mb * 1024 * 1024
        cgroups_path = self._cgroups.create(sandbox_id, memory_bytes)
        config = oci.build_config(spec, program, self._rootfs, input_dir, cgroups_path)
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle

    def remove_bundle(self, sandbox_id: str) -> None:
        shutil.rmtree(self._bundles / _checked(sandbox_id), ignore_errors=True)
        self._cgroups.remove(sandbox_id)

    async def run(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> Outcome:
        sandbox_id = spec.sandbox_id
        self._live.add(sandbox_id)
        process: asyncio.subprocess.Process | None = None
        try:
            bundle = self.write_bundle(spec, program)
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                *self.command("run", "--bundle", str(bundle), sandbox_id,
                              log_file=bundle / "runsc.log"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            return await self._supervise(spec, process, sink, started)
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
        sink: OutputSink,
        started: float,
    ) -> Outcome:
        pumps = [
            asyncio.create_task(pump(process.stdout, Stream.STDOUT, sink)),
            asyncio.create_task(pump(process.stderr, Stream.STDERR, sink)),
        ]
        timed_out = False
        try:
            async with asyncio.timeout(spec.limits.timeout_s):
                await process.wait()
        except TimeoutError:
            timed_out = True
        finally:
            if process.returncode is None:
                # Time is up (or the caller went away): end every process of the sandbox.
                # `kill --all ... KILL` cannot be ignored, and `delete --force` of a running
                # container stalls for seconds here.
                await self._runsc_quietly("kill", "--all", spec.sandbox_id, "KILL")
                await wait_or_kill(process, KILL_GRACE_S)
            await finish_pumps(pumps)
        duration_ms = int((time.monotonic() - started) * 1000)
        if timed_out:
            return Outcome(exit_code=None, timed_out=True, duration_ms=duration_ms)
        exit_code = process.returncode
        assert exit_code is not None
        self._raise_on_runsc_error(spec.sandbox_id, exit_code)
        memory_bytes = spec.limits.memory_mb * 1024 * 1024
        oom = exit_code != 0 and self._cgroups.out_of_memory(spec.sandbox_id, memory_bytes)
        return Outcome(exit_code=exit_code, oom_killed=oom, duration_ms=duration_ms)

    def _raise_on_runsc_error(self, sandbox_id: str, exit_code: int) -> None:
        """runsc reports its own failures with exit code 128 and a line in its log."""
        if exit_code != RUNSC_ERROR_EXIT:
            return
        log_file = self._bundles / sandbox_id / "runsc.log"
        with contextlib.suppress(OSError):
            for line in log_file.read_text(errors="replace").splitlines():
                if '"level":"error"' in line:
                    message = json.loads(line[: line.rindex("}") + 1]).get("msg", line)
                    log.error("runsc.failed", message=message)
                    raise RuntimeFailure(f"runsc failed: {message}")

    async def _destroy(
        self, sandbox_id: str, process: asyncio.subprocess.Process | None = None
    ) -> None:
        """Leave nothing behind: container, processes, cgroups, bundle."""
        if self._has_container_state(sandbox_id):
            await self._runsc_quietly("delete", "--force", sandbox_id)
        if process is not None and process.returncode is None:
            await wait_or_kill(process, KILL_GRACE_S)
        self.remove_bundle(sandbox_id)
        self._live.discard(sandbox_id)

    def _has_container_state(self, sandbox_id: str) -> bool:
        # runsc keeps one state file per container in its root, named after the id.
        return any(entry.name.startswith(sandbox_id) for entry in os.scandir(self._runsc_root))

    async def _runsc_quietly(self, *args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            *self.command(*args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        return process.returncode or 0, output.decode(errors="replace")

    async def _read_version(self) -> str:
        try:
            code, output = await self._runsc_quietly("--version")
        except OSError:
            return ""
        first = output.splitlines()[0] if output else ""
        return first.removeprefix("runsc version ").strip() if code == 0 else ""

    def _rootfs_identity(self) -> str:
        try:
            return Path(f"{self._rootfs}.identity").read_text().strip()
        except OSError:
            return ""

    async def _remove_orphans(self) -> None:
        """End containers and remove bundles a previous server left behind."""
        code, output = await self._runsc_quietly("list", "--quiet")
        leftover = set(output.split()) if code == 0 else set()
        leftover.update(entry.name for entry in os.scandir(self._bundles))
        leftover.update(self._cgroups.leftovers())
        for sandbox_id in sorted(leftover):
            if ID_PATTERN.match(sandbox_id):
                log.warning("runsc.orphan_removed", sandbox_id=sandbox_id)
                await self._runsc_quietly("delete", "--force", sandbox_id)
                self.remove_bundle(sandbox_id)


def _checked(sandbox_id: str) -> str:
    if not ID_PATTERN.match(sandbox_id):
        raise ValueError(f"not a sandbox id: {sandbox_id!r}")
    return sandbox_id
