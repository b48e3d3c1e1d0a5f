from __future__ import annotations

from starlette.testclient import TestClient

from sandbox.adapters.fake import FakeSandboxRuntime


def test_healthz_answers_ok(client: TestClient) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_answers_ready_when_the_runtime_is(client: TestClient) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_readyz_is_a_503_listing_the_runtimes_problems(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    runtime.problems = ["runsc not found", "rootfs missing"]

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "not_ready",
        "problems": ["runsc not found", "rootfs missing"],
    }


def test_healthz_stays_ok_while_the_runtime_is_not_ready(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    runtime.problems = ["runsc not found"]

    response = client.get("/healthz")

    assert response.status_code == 200
