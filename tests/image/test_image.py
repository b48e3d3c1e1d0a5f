"""The image as it is deployed: built from the Dockerfile, run by podman, probed over HTTP."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from integration.server import eventually, ok

from image.support import Container, running

pytestmark = [pytest.mark.image, pytest.mark.runsc]

COUNTER = b"""import time
n = 0
while True:
    print(n, flush=True)
    n += 1
    time.sleep(0.2)
"""


def printed_numbers(client: httpx.Client, sandbox_id: str) -> list[int]:
    stdout = ok(client.get(f"/sandboxes/{sandbox_id}/output"))["stdout"]
    return [int(line) for line in stdout.split()]


def detached_counter(client: httpx.Client) -> str:
    record = ok(client.post("/execute", params={"language": "python", "detach": "true"},
                            content=COUNTER), 202)
    sandbox_id: str = record["sandbox_id"]
    eventually(lambda: len(printed_numbers(client, sandbox_id)) >= 3, what="three lines")
    return sandbox_id


def goes_on_counting(client: httpx.Client, sandbox_id: str, last: int) -> list[int]:
    """The counter goes on from where it stopped: one run of 0, 1, 2, ... past `last`."""
    numbers = eventually(lambda: (found := printed_numbers(client, sandbox_id))[-1] > last + 2
                         and found, what="counting on after the restore")
    assert numbers == list(range(len(numbers)))
    return list(numbers)


def test_the_image_is_alive_and_ready(container: Container) -> None:
    assert ok(container.client.get("/healthz")) == {"status": "ok"}
    assert ok(container.client.get("/readyz"))["status"] == "ready"


def test_the_image_wants_its_token(container: Container) -> None:
    response = container.client.get("/list", headers={"Authorization": "Bearer wrong-token"})

    assert response.status_code == 401


@pytest.mark.parametrize(
    ("language", "script", "printed"),
    [
        ("python", b"print('hello from python')", "hello from python\n"),
        ("bash", b"echo 'hello from bash'", "hello from bash\n"),
    ],
    ids=["python", "bash"],
)
def test_the_image_runs_hello_world(
    container: Container, language: str, script: bytes, printed: str
) -> None:
    result = ok(container.client.post("/execute", params={"language": language}, content=script))

    assert result["exit_code"] == 0
    assert result["stdout"] == printed


def test_a_memory_bomb_in_the_image_is_killed_with_an_oom_verdict(container: Container) -> None:
    bomb = b"chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n"

    result = ok(container.client.post(
        "/execute", params={"language": "python", "memory_mb": "64", "timeout": "60"},
        content=bomb,
    ))

    assert result["oom_killed"] is True
    assert result["timed_out"] is False


def test_a_detached_script_in_the_image_is_suspended_restored_and_deleted(
    container: Container,
) -> None:
    client = container.client
    sandbox_id = detached_counter(client)

    suspended = ok(client.post(f"/sandboxes/{sandbox_id}/suspend"))
    last = printed_numbers(client, sandbox_id)[-1]
    restored = ok(client.post(f"/sandboxes/{sandbox_id}/restore"))
    goes_on_counting(client, sandbox_id, last)
    deleted = ok(client.delete(f"/sandboxes/{sandbox_id}"))

    assert suspended["state"] == "suspended"
    assert restored["state"] == "running"
    assert deleted["deleted"] is True
    assert client.get(f"/sandboxes/{sandbox_id}").status_code == 404


def test_a_suspended_sandbox_restores_in_a_new_container_on_the_same_volume(
    image: str, state: Path
) -> None:
    with running(image, state) as first:
        sandbox_id = detached_counter(first.client)
        ok(first.client.post(f"/sandboxes/{sandbox_id}/suspend"))
        last = printed_numbers(first.client, sandbox_id)[-1]
        exit_status = first.stop()
    parent = (state / "cgroup-parent").read_text()

    with running(image, state) as second:
        before = ok(second.client.get(f"/sandboxes/{sandbox_id}"))
        restored = ok(second.client.post(f"/sandboxes/{sandbox_id}/restore"))
        goes_on_counting(second.client, sandbox_id, last)
        ok(second.client.delete(f"/sandboxes/{sandbox_id}"))

    # A graceful stop: 0, or 128 + SIGTERM where uvicorn re-raises the signal once it has shut
    # down (tini reports that); never 137, a kill after the grace.
    assert exit_status in (0, 128 + signal.SIGTERM)
    assert before["state"] == "suspended"
    assert restored["state"] == "running"
    # The second container's reconcile looked for leftovers under the first one's parent.
    assert (state / "cgroup-parent").read_text() == parent
