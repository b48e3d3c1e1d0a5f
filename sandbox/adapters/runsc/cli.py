"""The runsc command line for one runsc root: argument lists only, never a shell."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from sandbox.domain.errors import RuntimeFailure

# runsc reports its own failures with this exit code (and a record in its log).
RUNSC_ERROR_EXIT = 128
POLL_S = 0.05


class Runsc:
    def __init__(
        self, path: str, root: Path, platform: str, compression: str = "none"
    ) -> None:
        self.path = path
        self.root = root
        self.platform = platform
        # Measured here (runsc 20240729, 256 MiB): uncompressed images are written in a third
        # of the time of flate's and restored faster; compression pays only where the disk
        # (a bucket) is slower than the CPU.
        self.checkpoint_flags = (f"--compression={compression}",)
        # Where the host offers no writable cgroup tree, runsc must not try to use one.
        self.ignore_cgroups = False

    def command(
        self, *args: str, log_file: Path | None = None, host_uds: bool = False,
        platform: str | None = None,
    ) -> list[str]:
        """The full argument list: the global flags every sandbox needs, then args.
        `host_uds` lets the sandbox connect to host Unix sockets in its mounts: the egress
        proxy's, for sandboxes with an allow-list only (their network stays none).
        `platform`, for `run` and `restore`, overrides the default one."""
        argv = [
            self.path,
            f"--root={self.root}",
            "--network=none",
            "--overlay2=root:memory",
            f"--platform={platform or self.platform}",
        ]
        if host_uds:
            argv.append("--host-uds=open")
        if self.ignore_cgroups:
            argv.append("--ignore-cgroups")
        if log_file is not None:
            argv.append(f"--log={log_file}")
        return [*argv, *args]

    async def quietly(self, *args: str) -> tuple[int, str]:
        """Run a short runsc command; its exit code and its output, stderr included."""
        process = await asyncio.create_subprocess_exec(
            *self.command(*args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await process.communicate()
        except asyncio.CancelledError:
            # Its caller went (a sandbox's supervision ended while it killed the sandbox):
            # the command is let finish, never left running behind the service's back.
            await process.wait()
            raise
        return process.returncode or 0, output.decode(errors="replace")

    async def version(self) -> str:
        """The version runsc reports, or "" when it cannot be run."""
        try:
            code, output = await self.quietly("--version")
        except OSError:
            return ""
        first = output.splitlines()[0] if output else ""
        return first.removeprefix("runsc version ").strip() if code == 0 else ""

    def has_state(self, sandbox_id: str) -> bool:
        # runsc keeps one state file per container in its root, named after the id.
        with os.scandir(self.root) as entries:
            return any(entry.name.startswith(sandbox_id) for entry in entries)

    async def containers(self) -> list[dict[str, Any]]:
        code, output = await self.quietly("list", "--format=json")
        if code != 0:
            raise RuntimeFailure(f"runsc list failed: {output.strip()[-300:]}")
        return list(json.loads(output) or [])

    async def sentry_pid(self, sandbox_id: str) -> int | None:
        """The host pid of the sandbox's own process (its sentry), while it runs."""
        code, output = await self.quietly("state", sandbox_id)
        try:
            pid = json.loads(output)["pid"] if code == 0 else None
        except (ValueError, KeyError, TypeError):
            return None
        return pid if isinstance(pid, int) and pid > 0 else None

    async def is_running(self, sandbox_id: str) -> bool:
        code, output = await self.quietly("state", sandbox_id)
        return code == 0 and json.loads(output).get("status") == "running"

    async def wait_until_stopped(self, sandbox_id: str, polls: int) -> None:
        for _poll in range(polls):
            if not await self.is_running(sandbox_id):
                return
            await asyncio.sleep(POLL_S)

    async def kill_all(self, sandbox_id: str) -> None:
        """SIGKILL every process of the sandbox: it cannot be ignored, and the sandbox ends."""
        await self.quietly("kill", "--all", sandbox_id, "KILL")

    async def delete(self, sandbox_id: str) -> None:
        """Remove runsc's state of a stopped container, if there is any."""
        if self.has_state(sandbox_id):
            await self.quietly("delete", "--force", sandbox_id)

    async def end(self, sandbox_id: str) -> None:
        """End the container and remove runsc's state of it, if there is any."""
        if not self.has_state(sandbox_id):
            return
        # `delete --force` of a running container stalls for seconds; kill everything first.
        await self.kill_all(sandbox_id)
        await self.quietly("delete", "--force", sandbox_id)

    async def memory_usage(self, sandbox_id: str) -> int | None:
        """gVisor's own count of the sandbox's memory, in bytes (None when it cannot tell)."""
        _, output = await self.quietly("events", "--stats", sandbox_id)
        try:
            return int(json.loads(output)["data"]["memory"]["usage"]["usage"])
        except (ValueError, KeyError, TypeError):
            return None


def first_error(text: str) -> str | None:
    """The first error in a runsc log, whose JSON records often run on with no newline."""
    decoder = json.JSONDecoder()
    index = text.find("{")
    while index != -1:
        try:
            record, end = decoder.raw_decode(text, index)
        except ValueError:
            end = index + 1
        else:
            if isinstance(record, dict) and record.get("level") == "error":
                # A panic in the sandbox appends every goroutine's stack: keep the sentence.
                return str(record.get("msg", "")).split("\n", 1)[0].rstrip(": ")[:500]
        index = text.find("{", end)
    return None
