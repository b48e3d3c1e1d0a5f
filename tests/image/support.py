"""The image tier's tools: build the image with `make image`, run it with podman as the
README says (runc, privileged, raised rlimits, the state on a host folder, the port on
127.0.0.1 only), and remove every container, folder and cgroup a test made, by id."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration.support import runsc_required

ROOT = Path(__file__).resolve().parents[2]
STATE_IN_IMAGE = "/var/lib/gvisor-sandbox/state"
BUILD_BOUND_S = 40 * 60.0
START_BOUND_S = 120.0
STOP_BOUND_S = 60
PODMAN_BOUND_S = 120.0
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Build:
    tag: str
    seconds: float
    size_mb: int
    cached: bool


def require_image_tools() -> None:
    """Root to build and run; podman unless `make image` may install it (required runs)."""
    if os.geteuid() != 0:
        problem = "the image tests need root (podman runs the image privileged)"
    elif shutil.which("podman") is None and not runsc_required():
        problem = "podman is missing (`make image` installs it; so does SANDBOX_REQUIRE_RUNSC=1)"
    else:
        return
    if runsc_required():
        pytest.fail(f"{problem} (CI=true or SANDBOX_REQUIRE_RUNSC=1: not skipping)", pytrace=False)
    pytest.skip(problem)


def podman(*args: str, timeout: float = PODMAN_BOUND_S, **kwargs: Any) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                          **kwargs)
    if done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    printed: str = done.stdout
    return printed.strip()


def build_image(log: Path) -> Build:
    """`make image` with podman: built once per set of inputs, found in the store after."""
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(
            ["make", "--no-print-directory", "image", "ENGINE=podman"], cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            timeout=BUILD_BOUND_S, check=False,
        )
    seconds = time.monotonic() - started
    printed = log.read_text(errors="replace")
    if done.returncode != 0:
        pytest.fail(f"make image failed (exit {done.returncode}):\n{printed[-4000:]}",
                    pytrace=False)
    tag = subprocess.run(["scripts/image.sh", "tag"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag))
    return Build(tag, seconds, size // 1_000_000, cached="is up to date" in printed)


@contextlib.contextmanager
def host_folder() -> Iterator[Path]:
    """A folder for the state volume; gone afterwards, whatever the container left in it."""
    folder = Path(tempfile.mkdtemp(prefix="gvisor-sandbox-image-", dir="/var/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Container:
    id: str
    client: httpx.Client

    def logs(self) -> str:
        done = subprocess.run(["podman", "logs", self.id], capture_output=True, text=True,
                              timeout=PODMAN_BOUND_S, check=False)
        return (done.stdout + done.stderr)[-4000:]

    def stop(self) -> int:
        """SIGTERM (as Cloud Run and `docker stop` send it); the server's exit status."""
        podman("stop", "--time", str(STOP_BOUND_S), self.id, timeout=STOP_BOUND_S + 30)
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.id))


@contextlib.contextmanager
def running(tag: str, state: Path) -> Iterator[Container]:
    """The image serving on a free 127.0.0.1 port with a fresh bearer token, ready; on the
    way out the container is removed, and with it the cgroups made inside it."""
    token = secrets.token_hex(16)
    container_id = podman(
        "--runtime", "runc", "run", "--detach", "--privileged",
        "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
        "--env", "SANDBOX_API_TOKENS", "--volume", f"{state}:{STATE_IN_IMAGE}",
        "--publish", "127.0.0.1::8080", tag,
        env={**os.environ, "SANDBOX_API_TOKENS": token},
    )
    try:
        port = podman("port", container_id, "8080").rsplit(":", 1)[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            container = Container(container_id, client)
            _wait_until_ready(container)
            yield container
    finally:
        subprocess.run(["podman", "rm", "--force", "--time", "5", container_id],
                       capture_output=True, timeout=PODMAN_BOUND_S, check=False)
        _remove_cgroups_of(container_id)


def _wait_until_ready(container: Container) -> None:
    deadline = time.monotonic() + START_BOUND_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if container.client.get("/readyz").status_code == 200:
                return
        state = podman("inspect", "--format", "{{.State.Status}}", container.id)
        assert state == "running", f"the container is {state}:\n{container.logs()}"
        time.sleep(0.5)
    pytest.fail(f"/readyz did not answer 200 within {START_BOUND_S:g} s:\n{container.logs()}")


def _remove_cgroups_of(container_id: str) -> None:
    """podman removes a container's own cgroup, but not while the service's sandbox cgroups
    (made inside it) are left in it, as after a kill: remove those empty folders, deepest
    first."""
    for top in (*CGROUP_ROOT.glob(f"*/*/libpod-{container_id}"),
                *CGROUP_ROOT.glob(f"*/libpod-{container_id}")):
        for folder, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
