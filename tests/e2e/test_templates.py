"""Templates and fork over HTTP: snapshot, list, inspect, start from (a sandbox, a script),
fork, delete; and each call's unhappy paths."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from e2e.support import StartService, create_session
from sandbox.adapters.fake import FakeSandboxRuntime

UNKNOWN = "0123456789abcdef01234567"
PRINT = 'print("hi")'


def snapshot_of_a_session(client: TestClient, text: bytes = b"kept") -> tuple[str, str]:
    """A session holding /workspace/kept.txt, and a template of it."""
    sandbox_id = create_session(client)
    client.put(f"/sandboxes/{sandbox_id}/files/kept.txt", content=text)
    response = client.post(f"/sandboxes/{sandbox_id}/snapshot")
    assert response.status_code == 201, response.text
    template_id: str = response.json()["template_id"]
    return sandbox_id, template_id


def error_of(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_a_template_is_listed_started_from_and_deleted(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    source_id, template_id = snapshot_of_a_session(client)
    client.put(f"/sandboxes/{source_id}/files/kept.txt", content=b"changed after")

    listed = client.get("/templates").json()["templates"]
    inspected = client.get(f"/templates/{template_id}")
    started = client.post("/sandboxes", json={"template": template_id, "language": "python"})
    copy_id = started.json()["sandbox_id"]
    kept = client.get(f"/sandboxes/{copy_id}/files/kept.txt").content
    ran = client.post(f"/execute?template={template_id}", content=PRINT.encode())
    refused = client.delete(f"/templates/{template_id}")
    client.delete(f"/sandboxes/{copy_id}")
    deleted = client.delete(f"/templates/{template_id}")

    assert [item["template_id"] for item in listed] == [template_id]
    assert inspected.json()["sandbox_id"] == source_id
    assert inspected.json()["language"] == "python"
    assert (started.status_code, started.json()["template"]) == (201, template_id)
    assert started.headers["location"] == f"/sandboxes/{copy_id}"
    assert kept == b"kept"
    assert (ran.status_code, ran.json()["stdout"]) == (200, "hi\n")
    assert error_of(refused) == (409, "invalid_state")
    assert copy_id in refused.json()["error"]["message"]
    assert deleted.json() == {"template_id": template_id, "deleted": True}
    assert client.get("/templates").json() == {"templates": []}
    assert runtime.live == {source_id}


def test_a_fork_answers_the_new_sandboxes(client: TestClient) -> None:
    source_id = create_session(client)
    client.put(f"/sandboxes/{source_id}/files/kept.txt", content=b"now")

    response = client.post(f"/sandboxes/{source_id}/fork", json={"count": 2})

    forks = response.json()["sandboxes"]
    assert response.status_code == 201
    assert [fork["state"] for fork in forks] == ["running", "running"]
    assert [client.get(f"/sandboxes/{fork['sandbox_id']}/files/kept.txt").content
            for fork in forks] == [b"now", b"now"]
    assert len(client.get("/sandboxes").json()["sandboxes"]) == 3


@pytest.mark.parametrize(("call", "body"), [
    ("POST /sandboxes", {"template": UNKNOWN}),
    (f"POST /execute?template={UNKNOWN}", None),
    (f"GET /templates/{UNKNOWN}", None),
    (f"DELETE /templates/{UNKNOWN}", None),
    (f"POST /sandboxes/{UNKNOWN}/snapshot", None),
    (f"POST /sandboxes/{UNKNOWN}/fork", {"count": 1}),
    ("GET /templates/not-an-id", None),
])
def test_an_unknown_template_or_sandbox_is_a_404(
    client: TestClient, call: str, body: dict[str, Any] | None
) -> None:
    method, path = call.split(" ")

    response = client.request(method, path, json=body,
                              content=None if body is not None or method != "POST"
                              else PRINT.encode())

    assert error_of(response) == (404, "not_found")


@pytest.mark.parametrize(("body", "said"), [
    ({"count": 0}, "count must be from 1 to"),
    ({"count": 99}, "count must be from 1 to"),
    ({"count": "2"}, "count"),
    ({}, "count is required"),
    ({"count": 1, "other": 1}, "unknown field"),
])
def test_a_bad_fork_is_a_400(client: TestClient, body: dict[str, Any], said: str) -> None:
    source_id = create_session(client)

    response = client.post(f"/sandboxes/{source_id}/fork", json=body)

    assert error_of(response) == (400, "invalid_request")
    assert said in response.json()["error"]["message"]


def test_what_a_template_fixes_cannot_be_asked_for_again(client: TestClient) -> None:
    _, template_id = snapshot_of_a_session(client)

    with_memory = client.post("/sandboxes", json={"template": template_id, "memory_mb": 256})
    other_language = client.post("/sandboxes", json={"template": template_id,
                                                     "language": "bash"})
    detached = client.post(f"/execute?template={template_id}&detach=true",
                           content=PRINT.encode())
    with_packages = client.post(f"/execute?template={template_id}&packages=six",
                                content=PRINT.encode())

    assert error_of(with_memory) == (400, "invalid_request")
    assert "memory_mb" in with_memory.json()["error"]["message"]
    assert error_of(other_language) == (400, "invalid_request")
    assert error_of(detached) == (400, "invalid_request")
    assert error_of(with_packages) == (400, "invalid_request")


def test_a_suspended_sandbox_cannot_be_snapshotted_or_forked(client: TestClient) -> None:
    sandbox_id = create_session(client)
    client.post(f"/sandboxes/{sandbox_id}/suspend")

    snapshot = client.post(f"/sandboxes/{sandbox_id}/snapshot")
    fork = client.post(f"/sandboxes/{sandbox_id}/fork", json={"count": 1})

    assert error_of(snapshot) == (409, "invalid_state")
    assert error_of(fork) == (409, "invalid_state")


def test_a_fork_beyond_the_running_limit_is_a_429_and_makes_nothing(
    start_service: StartService,
) -> None:
    client = start_service(max_running_sandboxes=2, capacity_wait_s=0.05).client
    sandbox_id = create_session(client)

    response = client.post(f"/sandboxes/{sandbox_id}/fork", json={"count": 2})

    assert error_of(response) == (429, "at_capacity")
    assert "Retry-After" in response.headers
    assert [item["sandbox_id"] for item in client.get("/sandboxes").json()["sandboxes"]] == [
        sandbox_id]
