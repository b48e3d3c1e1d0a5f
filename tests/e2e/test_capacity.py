"""Capacity through HTTP: executions at once and the memory budget, each waited for a bounded
time and then refused with 429 and Retry-After; places freed however a request ends."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest

from e2e.scrape import sample
from e2e.support import LOCAL_BASE_URL, StartService, create_session, running
from sandbox.adapters.fake import FakeBehaviour, FakeSandboxRuntime
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.model import Outcome, Program, SandboxSpec
from sandbox.domain.ports import OutputSink
from sandbox.settings import Settings

HELLO = b'print("hello")\n'
SLOW = b"# runs until cancelled\n"
EXECUTE = "/execute?language=python"


@asynccontextmanager
async def serving(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeSandboxRuntime]]:
    """Requests at once in one event loop, which TestClient cannot send."""
    async with running(settings) as (app, runtime):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL_BASE_URL) as client:
            yield client, runtime


async def until(condition: Callable[[], object]) -> None:
    with anyio.fail_after(5):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_executions_over_the_limit_get_a_429_after_the_bounded_wait(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(settings, max_concurrent_executions=1, capacity_wait_s=0.1)
    async with serving(settings) as (client, runtime):
        runtime.program(SLOW, FakeBehaviour(sleep_s=60))
        first = asyncio.create_task(client.post(EXECUTE, content=SLOW))
        await until(lambda: runtime.live)

        refused = await client.post(EXECUTE, content=HELLO)
        streamed = await client.post(f"{EXECUTE}&stream=true", content=HELLO)

        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "at_capacity"
        assert "executions" in refused.json()["error"]["message"]
        # Refused before the stream started: a plain error answer, not a 200 with an event.
        assert streamed.status_code == 429
        assert streamed.headers["Content-Type"] == "application/json"

        # The client of the first gives up: its place is freed.
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert runtime.live == set()
        assert (await client.post(EXECUTE, content=HELLO)).status_code == 200

        metrics = (await client.get("/metrics")).text
    assert sample(metrics, "sandbox_capacity_rejections_total", limit="executions") == 2
    assert sample(metrics, "sandbox_capacity_executions") == 0


@pytest.mark.anyio
async def test_a_waiting_execution_runs_when_a_place_is_freed(settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_concurrent_executions=1, capacity_wait_s=60)
    async with serving(settings) as (client, runtime):
        runtime.program(SLOW, FakeBehaviour(sleep_s=60))
        first = asyncio.create_task(client.post(EXECUTE, content=SLOW))
        await until(lambda: runtime.live)
        second = asyncio.create_task(client.post(EXECUTE, content=HELLO))
        await asyncio.sleep(0.05)
        assert not second.done()

        first.cancel()
        answer = await second

    assert answer.status_code == 200
    assert answer.json()["stdout"] == "hello\n"


def test_a_place_is_freed_when_the_runtime_fails(
    start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = start_service(max_concurrent_executions=1, capacity_wait_s=0.1)
    healthy_run = service.runtime.run

    async def broken(spec: SandboxSpec, program: Program, sink: OutputSink) -> Outcome:
        raise RuntimeFailure("runsc died")

    monkeypatch.setattr(service.runtime, "run", broken)
    failed = [service.client.post(EXECUTE, content=HELLO).status_code for _ in range(3)]
    monkeypatch.setattr(service.runtime, "run", healthy_run)

    assert failed == [503, 503, 503]
    assert service.client.post(EXECUTE, content=HELLO).status_code == 200


def test_the_memory_budget_spans_sessions_and_executions(start_service: StartService) -> None:
    # Room for one sandbox of the default 512 MiB, and 256 MiB besides.
    client = start_service(max_total_memory_mb=768, capacity_wait_s=0.05).client
    sandbox_id = create_session(client)

    refused = client.post(EXECUTE, content=HELLO)
    second_session = client.post("/sandboxes")
    detached = client.post(f"{EXECUTE}&detach=true", content=HELLO)
    small = client.post(f"{EXECUTE}&memory_mb=256", content=HELLO)
    larger_than_all = client.post(f"{EXECUTE}&memory_mb=1024", content=HELLO)

    assert refused.status_code == 429
    assert "Retry-After" in refused.headers
    assert "512 of the 768 MiB" in refused.json()["error"]["message"]
    assert second_session.status_code == 429
    assert detached.status_code == 429
    assert small.status_code == 200
    assert larger_than_all.status_code == 400
    assert len(client.get("/sandboxes").json()["sandboxes"]) == 1

    client.post(f"/sandboxes/{sandbox_id}/suspend")
    assert client.post(EXECUTE, content=HELLO).status_code == 200
    assert client.post(f"/sandboxes/{sandbox_id}/restore").status_code == 200
    assert client.post(EXECUTE, content=HELLO).status_code == 429
    client.delete(f"/sandboxes/{sandbox_id}")
    assert client.post(EXECUTE, content=HELLO).status_code == 200

    metrics = client.get("/metrics").text
    assert sample(metrics, "sandbox_capacity_rejections_total", limit="memory") == 4


SLEEP = {"language": "python", "code": "time.sleep(60)"}
QUICK = {"language": "python", "code": 'print("quick")'}


async def until_a_call_is_at_work(client: httpx.AsyncClient) -> None:
    with anyio.fail_after(5):
        while True:
            if sample((await client.get("/metrics")).text, "sandbox_capacity_calls") >= 1:
                return
            await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_execs_and_file_calls_over_the_limit_get_a_429_after_the_bounded_wait(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(settings, max_concurrent_calls=1, capacity_wait_s=0.1)
    async with serving(settings) as (client, _):
        base = f"/sandboxes/{(await client.post('/sandboxes', json={})).json()['sandbox_id']}"
        await client.put(f"{base}/files/a.txt", content=b"a")
        first = asyncio.create_task(client.post(f"{base}/exec", json=SLEEP))
        await until_a_call_is_at_work(client)

        refused = [
            await client.post(f"{base}/exec", json=QUICK),
            await client.post(f"{base}/exec?stream=true", json=QUICK),
            await client.put(f"{base}/files/b.txt", content=b"b"),
            await client.get(f"{base}/files/a.txt"),
            await client.get(f"{base}/files?path=/workspace"),
        ]
        # The client of the first gives up: its place is freed.
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        after = await client.post(f"{base}/exec", json=QUICK)
        metrics = (await client.get("/metrics")).text

    for answer in refused:
        assert answer.status_code == 429, answer.text
        assert answer.headers["Retry-After"] == "1"
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json()["error"]["code"] == "at_capacity"
        assert "calls" in answer.json()["error"]["message"]
    assert after.json()["stdout"] == "quick\n"
    assert sample(metrics, "sandbox_capacity_rejections_total", limit="calls") == 5
    assert sample(metrics, "sandbox_capacity_calls") == 0
