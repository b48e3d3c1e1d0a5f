"""A real server (`python -m sandbox`) on a host without usable cgroups, made by mounting an
empty read-only folder over /sys/fs/cgroup in a mount namespace of its own (as on container
hosts that give no cgroup tree): it says which limits are weaker there, and refuses to start
when the operator requires cgroups."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from integration.server import ROOT, free_port, ok, server_env

from sandbox.settings import Settings

pytestmark = pytest.mark.runsc

START_BOUND_S = 60.0
WITHOUT_CGROUPS = "mount -t tmpfs -o ro,size=4k none /sys/fs/cgroup && exec \"$@\""


def without_cgroups(argv: list[str]) -> list[str]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed to hide the cgroup tree")
    return ["unshare", "--mount", "sh", "-c", WITHOUT_CGROUPS, "sh", *argv]


@contextlib.contextmanager
def server_process(
    settings: Settings, log: Path, **overrides: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            without_cgroups([sys.executable, "-m", "sandbox"]), cwd=ROOT,
            env=server_env(settings, port, **overrides),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=START_BOUND_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_required_cgroups_on_a_host_without_them_stop_the_server_with_a_reason(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"

    with server_process(settings, log, SANDBOX_REQUIRE_CGROUPS="true") as (process, _port):
        code = process.wait(timeout=START_BOUND_S)

    text = log.read_text(errors="replace")
    assert code not in (0, None)
    assert '"event": "runsc.cgroups_required"' in text
    assert "/sys/fs/cgroup/memory is missing or not writable" in text


def test_without_cgroups_the_server_runs_and_says_which_limits_are_weaker(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"

    with server_process(settings, log) as (process, port), httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=START_BOUND_S
    ) as client:
        ready = wait_ready(client, process, log)
        result = ok(client.post("/execute?language=python", content=b"print('ran')\n"))

    assert ready["limits"]["cpu"] == []
    assert ready["limits"]["memory"] == ["memory_watch"]
    assert result["stdout"] == "ran\n"
    assert '"event": "runsc.limits_weakened"' in log.read_text(errors="replace")


def wait_ready(
    client: httpx.Client, process: subprocess.Popen[bytes], log: Path
) -> dict[str, dict[str, list[str]]]:
    deadline = time.monotonic() + START_BOUND_S
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        with contextlib.suppress(httpx.TransportError):
            response = client.get("/readyz")
            if response.status_code == 200:
                body: dict[str, dict[str, list[str]]] = response.json()
                return body
        time.sleep(0.1)
    pytest.fail(f"/readyz did not answer 200 within {START_BOUND_S:g} s")
