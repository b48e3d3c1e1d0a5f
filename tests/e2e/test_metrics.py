"""GET /metrics: Prometheus's text format, with counters that follow what the service did."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import providers
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from e2e.scrape import sample
from e2e.support import create_session, fake_runtime_of, fake_settings, local_client
from sandbox.adapters.fake import FakeBehaviour, FakeSandboxRuntime
from sandbox.adapters.fake_packages import FakePackageInstaller
from sandbox.containers import Container
from sandbox.entrypoints.app import create_app

HELLO = b'print("hello")\n'


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, FakeSandboxRuntime]]:
    settings = fake_settings(tmp_path)
    container = Container(settings=settings)
    container.package_installer.override(providers.Object(
        FakePackageInstaller(unavailable=["nosuchpackage"], metrics=container.metrics())
    ))
    with local_client(create_app(settings, container)) as client:
        yield client, fake_runtime_of(container)


@pytest.fixture
def client(served: tuple[TestClient, FakeSandboxRuntime]) -> TestClient:
    return served[0]


def scrape(client: TestClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.text


def test_the_exposition_parses_and_names_every_metric(client: TestClient) -> None:
    names = {family.name for family in text_string_to_metric_families(scrape(client))}

    assert {
        "sandbox_http_requests", "sandbox_http_request_seconds", "sandbox_executions",
        "sandbox_execution_seconds", "sandbox_sandboxes", "sandbox_suspend_seconds",
        "sandbox_restore_seconds", "sandbox_capacity_rejections",
        "sandbox_package_layer_requests",
    } <= names


def test_requests_are_counted_by_route_template_never_by_raw_path(client: TestClient) -> None:
    client.get("/sandboxes/" + "a" * 24)
    client.get("/sandboxes/" + "b" * 24)
    client.get("/sandboxes/" + "c" * 24 + "/files/deep/in/a.txt")
    client.get("/no/such/route")
    client.request("BREW", "/execute")

    text = scrape(client)

    assert sample(text, "sandbox_http_requests_total", method="GET",
                  route="/sandboxes/{sandbox_id}", status="404") == 2
    assert sample(text, "sandbox_http_requests_total", method="GET",
                  route="/sandboxes/{sandbox_id}/files/{path}", status="404") == 1
    assert sample(text, "sandbox_http_requests_total", route="unmatched", status="404") == 1
    assert sample(text, "sandbox_http_requests_total", method="other", route="/execute",
                  status="405") == 1
    assert "a" * 24 not in text
    assert sample(text, "sandbox_http_request_seconds_count", method="GET",
                  route="/sandboxes/{sandbox_id}") == 2


def test_executions_are_counted_by_kind_and_outcome(
    served: tuple[TestClient, FakeSandboxRuntime],
) -> None:
    client, runtime = served
    runtime.program(b"# oom\n", FakeBehaviour(oom_killed=True))
    client.post("/execute?language=python", content=HELLO)
    client.post("/execute?language=python&stream=true", content=HELLO)
    client.post("/execute?language=python", content=b"import sys\nsys.exit(3)\n")
    client.post("/execute?language=python&timeout=0.05", content=b"import time\ntime.sleep(5)\n")
    client.post("/execute?language=python", content=b"# oom\n")
    sandbox_id = create_session(client)
    client.post(f"/sandboxes/{sandbox_id}/exec?language=bash", content=b"echo hi\n")

    text = scrape(client)

    def executions(kind: str, outcome: str) -> float:
        return sample(text, "sandbox_executions_total", kind=kind, outcome=outcome)

    assert executions("execute", "ok") == 2
    assert executions("execute", "failed") == 1
    assert executions("execute", "timed_out") == 1
    assert executions("execute", "oom") == 1
    assert executions("exec", "ok") == 1
    assert sample(text, "sandbox_execution_seconds_count", kind="execute") == 5
    assert sample(text, "sandbox_http_requests_total", method="POST", route="/execute",
                  status="200") == 5


def test_sandboxes_are_counted_by_state_and_suspend_and_restore_are_timed(
    client: TestClient,
) -> None:
    kept = create_session(client)
    suspended = create_session(client)
    client.post(f"/sandboxes/{suspended}/suspend")
    client.post(f"/sandboxes/{kept}/suspend")
    client.post(f"/sandboxes/{kept}/restore")

    text = scrape(client)

    assert sample(text, "sandbox_sandboxes", state="running") == 1
    assert sample(text, "sandbox_sandboxes", state="suspended") == 1
    assert sample(text, "sandbox_sandboxes", state="exited") == 0
    assert sample(text, "sandbox_suspend_seconds_count") == 2
    assert sample(text, "sandbox_restore_seconds_count") == 1
    assert sample(text, "sandbox_capacity_memory_mb") == 512


def test_package_layers_are_counted_as_built_hit_or_failed(client: TestClient) -> None:
    for packages in ("six", "six", "nosuchpackage"):
        client.post(f"/execute?language=python&packages={packages}", content=HELLO)

    text = scrape(client)

    assert sample(text, "sandbox_package_layer_requests_total", result="built") == 1
    assert sample(text, "sandbox_package_layer_requests_total", result="hit") == 1
    assert sample(text, "sandbox_package_layer_requests_total", result="failed") == 1


def test_each_app_counts_only_its_own_requests(tmp_path: Path) -> None:
    counted = []
    for name, requests in (("first", 2), ("second", 1)):
        with local_client(create_app(fake_settings(tmp_path / name))) as client:
            for _ in range(requests):
                client.get("/healthz")
            counted.append(sample(scrape(client), "sandbox_http_requests_total",
                                  route="/healthz"))

    assert counted == [2, 1]
