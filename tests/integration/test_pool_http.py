"""Warm pools in a real server (`python -m sandbox` on real gVisor): requests served warm
answer as cold ones do, the pool refills, and no pooled sandbox outlives its server, not
even one that was killed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e.scrape import sample

from integration.server import destroy_leftovers, eventually, ok, serving
from integration.support import leftovers
from sandbox.settings import Settings

pytestmark = pytest.mark.runsc

PANDAS = b"""\
import pandas as pd
frame = pd.DataFrame({"a": [1, 2, 3], "b": [4.0, 5.5, 6.0]})
print(frame.describe())
"""
FILL_BOUND_S = 120.0


@pytest.fixture(autouse=True)
def cleaned_up(settings: Settings) -> Iterator[None]:
    yield
    destroy_leftovers(settings)


def ready(client: httpx.Client, profile: str) -> float:
    return sample(client.get("/metrics").text, "sandbox_pool_ready", profile=profile)


def result(body: dict[str, Any]) -> tuple[object, ...]:
    return body["exit_code"], body["stdout"], body["stderr"], body["timed_out"]


def containers(settings: Settings) -> set[str]:
    return {entry.split()[1] for entry in leftovers(settings) if entry.startswith("container ")}


def test_pooled_requests_answer_as_cold_ones_and_the_pool_refills(
    settings: Settings, tmp_path: Path
) -> None:
    with serving(settings, tmp_path / "server.log", SANDBOX_POOL="python:1,bash:1") as server:
        client = server.client
        eventually(lambda: ready(client, "python") == ready(client, "bash") == 1,
                   within_s=FILL_BOUND_S, what="the pool's fill")
        warm_python = ok(client.post("/execute?language=python", content=PANDAS))
        warm_bash = ok(client.post("/execute?language=bash", content=b"echo hi; exit 3\n"))
        cold_python = ok(client.post("/execute?language=python&memory_mb=256", content=PANDAS))
        cold_bash = ok(client.post("/execute?language=bash&memory_mb=256",
                                   content=b"echo hi; exit 3\n"))
        eventually(lambda: ready(client, "python") == ready(client, "bash") == 1,
                   within_s=FILL_BOUND_S, what="the pool's refill")
        metrics = client.get("/metrics").text
        stopped = server.stop()

    assert result(warm_python) == result(cold_python)
    assert "mean" in warm_python["stdout"]
    assert result(warm_bash) == result(cold_bash) == (3, "hi\n", "", False)
    assert sample(metrics, "sandbox_pool_hits_total", profile="python") == 1
    assert sample(metrics, "sandbox_pool_hits_total", profile="bash") == 1
    assert sample(metrics, "sandbox_pool_misses_total", reason="no_profile") == 2
    assert sample(metrics, "sandbox_pool_refill_seconds_count", profile="python") == 2
    assert stopped == 0  # a graceful stop
    assert leftovers(settings) == []  # the stop destroyed the pool


def test_pooled_sandboxes_a_killed_server_left_are_removed_by_the_next_one(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with serving(settings, log, SANDBOX_POOL="bash:2") as first:
        eventually(lambda: ready(first.client, "bash") == 2, within_s=FILL_BOUND_S,
                   what="the first pool's fill")
        first.kill()
    left = containers(settings)

    with serving(settings, log, SANDBOX_POOL="bash:1") as second:
        eventually(lambda: ready(second.client, "bash") == 1, within_s=FILL_BOUND_S,
                   what="the second pool's fill")
        running = containers(settings)
        second.stop()

    assert len(left) == 2  # the kill left the first pool running
    assert len(running) == 1
    assert left.isdisjoint(running)
    assert leftovers(settings) == []
