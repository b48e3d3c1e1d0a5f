"""POST /execute with warm pools (on the fake runtime): served warm when a profile fits,
cold otherwise, and counted either way."""

from __future__ import annotations

import time

from starlette.testclient import TestClient

from e2e.scrape import sample
from e2e.support import Service, StartService, ndjson

HELLO = b'print("hello")\n'


def scrape(client: TestClient) -> str:
    return client.get("/metrics").text


def filled(service: Service, **sizes: int) -> None:
    deadline = time.monotonic() + 5
    while any(sample(scrape(service.client), "sandbox_pool_ready", profile=profile) != size
              for profile, size in sizes.items()):
        assert time.monotonic() < deadline, "the pool did not fill"
        time.sleep(0.01)


def test_an_execute_that_fits_the_pool_is_served_warm(start_service: StartService) -> None:
    service = start_service(pool="python:1,bash:1")
    filled(service, python=1, bash=1)
    pooled = set(service.runtime.warm)

    response = service.client.post("/execute?language=python", content=HELLO)

    assert response.status_code == 200
    assert response.json()["stdout"] == "hello\n"
    assert response.json()["sandbox_id"] in pooled
    assert service.runtime.runs == []
    assert sample(scrape(service.client), "sandbox_pool_hits_total", profile="python") == 1


def test_a_streamed_execute_is_served_warm_too(start_service: StartService) -> None:
    service = start_service(pool="bash:1")
    filled(service, bash=1)

    response = service.client.post("/execute?language=bash&stream=true", content=b"echo hi\n")

    events = ndjson(response.text)
    assert [event["type"] for event in events] == ["start", "stdout", "exit"]
    assert events[1]["data"] == "hi\n"
    assert [program.source for _, program in service.runtime.warm_runs] == [b"echo hi\n"]


def test_a_detached_execute_runs_in_a_managed_sandbox_not_a_pooled_one(
    start_service: StartService,
) -> None:
    service = start_service(pool="python:1")
    filled(service, python=1)

    response = service.client.post("/execute?language=python&detach=true", content=HELLO)

    assert response.status_code == 202
    assert response.json()["sandbox_id"] not in service.runtime.warm
    assert service.runtime.warm_runs == []


def test_a_request_the_pool_cannot_serve_runs_cold_and_the_miss_says_why(
    start_service: StartService,
) -> None:
    service = start_service(pool="python:1")
    filled(service, python=1)

    response = service.client.post("/execute?language=python&memory_mb=256", content=HELLO)

    text = scrape(service.client)
    assert response.status_code == 200
    assert len(service.runtime.runs) == 1
    assert sample(text, "sandbox_pool_misses_total", reason="no_profile") == 1
    assert sample(text, "sandbox_pool_hits_total", profile="python") == 0


def test_without_a_pool_every_request_runs_cold(start_service: StartService) -> None:
    service = start_service(pool="")

    service.client.post("/execute?language=python", content=HELLO)

    assert len(service.runtime.runs) == 1
    assert sample(scrape(service.client), "sandbox_pool_misses_total", reason="disabled") == 1


def test_refills_are_timed_and_failures_counted(start_service: StartService) -> None:
    service = start_service(pool="python:1")
    filled(service, python=1)

    text = scrape(service.client)

    assert sample(text, "sandbox_pool_refill_seconds_count", profile="python") == 1
    assert sample(text, "sandbox_pool_refill_failures_total", profile="python") == 0
