"""A real server for the tiers that need one (faults, load): `python -m sandbox` on real gVisor,
on a free loopback port, its log in a file, stopped (or killed) on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from integration.support import started_runtime
from sandbox.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
START_BOUND_S = 60.0
STOP_BOUND_S = 90.0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    client: httpx.Client
    log: Path

    def kill(self) -> int:
        """SIGKILL: a crash, with no chance to suspend or clean up anything."""
        self.process.send_signal(signal.SIGKILL)
        return self.process.wait(timeout=STOP_BOUND_S)

    def stop(self, bound_s: float = STOP_BOUND_S) -> int:
        """SIGTERM, as a service manager stops it; its exit status once it has gone."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=bound_s)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(settings: Settings, port: int, **overrides: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if name != "SANDBOX_API_TOKENS"}  # these tests speak without a token
    env.update({
        "SANDBOX_RUNTIME": "runsc",
        "SANDBOX_HOST": "127.0.0.1",
        "SANDBOX_PORT": str(port),
        "SANDBOX_STATE_DIR": str(settings.state_dir),
        "SANDBOX_ROOTFS_DIR": str(settings.rootfs_dir),
        "SANDBOX_CGROUP_PARENT": settings.cgroup_parent,
        "SANDBOX_LOG_FORMAT": "json",
        # No warm pool unless a test asks for one: the others count the sandboxes they make.
        "SANDBOX_POOL": "",
    })
    env.update(overrides)
    return env


@contextlib.contextmanager
def serving(
    settings: Settings, log: Path, ready: bool = True, timeout_s: float = 120.0,
    **overrides: str,
) -> Iterator[Server]:
    """A started server; with ready=True, one whose /readyz answers 200. Whatever the test
    did, the process is gone on the way out (SIGTERM, then SIGKILL past the bound)."""
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sandbox"], cwd=ROOT,
            env=server_env(settings, port, **overrides),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout_s) as client:
            server = Server(process, client, log)
            _wait_until_up(server, "/readyz" if ready else "/healthz")
            yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_BOUND_S)


def _wait_until_up(server: Server, probe: str) -> None:
    deadline = time.monotonic() + START_BOUND_S
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"the server exited:\n{server.log_tail()}"
        with contextlib.suppress(httpx.TransportError):
            if server.client.get(probe).status_code == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"{probe} did not answer 200 within {START_BOUND_S:g} s:\n{server.log_tail()}")


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def eventually(check: Any, within_s: float = 30.0, what: str = "the condition") -> Any:
    """Poll until check() returns something true, and return it; a bound against hangs."""
    deadline = time.monotonic() + within_s
    while True:
        if result := check():
            return result
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s:g} s"
        time.sleep(0.1)


def records(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {record["sandbox_id"]: record for record in ok(client.get("/list"))["sandboxes"]}


def destroy_leftovers(settings: Settings) -> None:
    """Whatever sandboxes a test left on the host (a failed one may leave them running after
    its server has gone) are destroyed; tests assert on leftovers before this."""

    async def clean() -> None:
        async with started_runtime(settings):
            pass

    asyncio.run(clean())
