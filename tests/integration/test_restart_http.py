"""A real server (`python -m sandbox` on real gVisor) stopped and started again: a suspended
counter restores on the new server and counts on from where it stopped."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from integration.server import destroy_leftovers, eventually, ok, records, serving
from integration.support import leftovers
from sandbox.settings import Settings

pytestmark = pytest.mark.runsc


@pytest.fixture(autouse=True)
def cleaned_up(settings: Settings) -> Iterator[None]:
    """Servers come and go here without a runtime fixture: what they left (their cgroup
    parent included) goes afterwards."""
    yield
    destroy_leftovers(settings)

COUNTER = b"""\
import time
n = 0
while True:
    print(n, flush=True)
    n += 1
    time.sleep(0.1)
"""
DETACH = "/execute?language=python&detach=true&timeout=120"


def numbers(client: httpx.Client, sandbox_id: str) -> list[int]:
    output = ok(client.get(f"/sandboxes/{sandbox_id}/output"))
    return [int(word) for word in output["stdout"].split()]


def numbers_past(client: httpx.Client, sandbox_id: str, count: int) -> list[int]:
    def counted_past() -> list[int] | None:
        found = numbers(client, sandbox_id)
        return found if len(found) > count else None

    found: list[int] = eventually(counted_past, what=f"counting past {count}")
    return found


def states(client: httpx.Client) -> dict[str, tuple[str, str]]:
    return {sandbox_id: (record["state"], record["reason"])
            for sandbox_id, record in records(client).items()}


def test_a_counter_suspended_before_the_server_is_killed_counts_on_after_a_new_start(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with serving(settings, log) as first:
        sandbox_id = ok(first.client.post(DETACH, content=COUNTER), 202)["sandbox_id"]
        numbers_past(first.client, sandbox_id, 3)
        suspended = ok(first.client.get(f"/suspend/{sandbox_id}"))
        before = numbers(first.client, sandbox_id)
        killed = first.kill()

    with serving(settings, log) as second:
        listed = states(second.client)
        restored = ok(second.client.get(f"/restore/{sandbox_id}"))
        after = numbers_past(second.client, sandbox_id, len(before) + 5)
        deleted = ok(second.client.get(f"/delete/{sandbox_id}"))
        stopped = second.stop()

    assert suspended["state"] == "suspended"
    assert killed == -signal.SIGKILL
    assert listed == {sandbox_id: ("suspended", "suspended on request")}
    assert restored["state"] == "running"
    assert after[: len(before)] == before
    assert after == list(range(len(after)))
    assert deleted == {"sandbox_id": sandbox_id, "deleted": True}
    assert stopped == 0  # a graceful stop (uvicorn would re-raise the signal: the server does not)
    assert leftovers(settings) == []


def test_a_graceful_stop_suspends_a_running_counter_that_counts_on_after_a_new_start(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with serving(settings, log) as first:
        sandbox_id = ok(first.client.post(DETACH, content=COUNTER), 202)["sandbox_id"]
        numbers_past(first.client, sandbox_id, 3)
        stopped_first = first.stop()

    with serving(settings, log) as second:
        listed = states(second.client)
        before = numbers(second.client, sandbox_id)
        restored = ok(second.client.get(f"/restore/{sandbox_id}"))
        after = numbers_past(second.client, sandbox_id, len(before) + 5)
        ok(second.client.get(f"/delete/{sandbox_id}"))
        stopped_second = second.stop()

    assert stopped_first == 0
    assert listed == {sandbox_id: ("suspended", "suspended when the server stopped")}
    assert restored["state"] == "running"
    assert after[: len(before)] == before
    assert after == list(range(len(after)))
    assert stopped_second == 0
    assert leftovers(settings) == []
