from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from e2e.support import StartService, create_session
from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.domain.ids import ID_PATTERN


def test_create_answers_201_with_a_running_session(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    response = client.post("/sandboxes", json={})

    assert response.status_code == 201
    record = response.json()
    assert ID_PATTERN.match(record["sandbox_id"])
    assert response.headers["Location"] == f"/sandboxes/{record['sandbox_id']}"
    assert (record["kind"], record["state"], record["language"]) == ("session", "running",
                                                                       "python")
    assert record["idle_timeout_s"] == 900.0
    assert record["limits"]["timeout_s"] == 30.0
    assert runtime.live == {record["sandbox_id"]}


def test_create_without_a_body_takes_every_default(client: TestClient) -> None:
    response = client.post("/sandboxes")

    assert response.status_code == 201
    assert response.json()["language"] == "python"


def test_create_takes_its_options(client: TestClient) -> None:
    response = client.post("/sandboxes", json={
        "language": "bash", "timeout": 5, "memory_mb": 256, "env": {"GREETING": "hi"},
        "idle_timeout": 60,
    })

    record = response.json()
    assert response.status_code == 201
    assert record["language"] == "bash"
    assert (record["limits"]["timeout_s"], record["limits"]["memory_mb"]) == (5, 256)
    assert record["idle_timeout_s"] == 60


BAD_BODIES: list[tuple[Any, str]] = [
    ({"language": "ruby"}, "language must be one of"),
    ({"language": ""}, "language must be one of"),
    ({"langauge": "python"}, "unknown field(s): langauge"),
    ({"timeout": 301}, "at most 300 seconds"),
    ({"timeout": "10"}, "timeout must be a number"),
    ({"timeout": True}, "timeout must be a number"),
    ({"memory_mb": 8}, "memory_mb"),
    ({"memory_mb": 1.5}, "whole number"),
    ({"idle_timeout": 0}, "idle_timeout must be more than 0"),
    ({"idle_timeout": 7 * 24 * 3600 + 1}, "at most 604800 seconds"),
    ({"env": ["A=1"]}, "env must be an object"),
    ({"env": {"1ABC": "x"}}, "letters, digits and underscores"),
    ({"env": {"A-B": "x"}}, "letters, digits and underscores"),
    ({"env": {"A": 1}}, "must be a string"),
    ({"env": {"A": "x\u0000y"}}, "NUL"),
    ({"env": {f"V{n}": "x" for n in range(65)}}, "at most 64"),
    ([], "must be a JSON object"),
    ("python", "must be a JSON object"),
]


@pytest.mark.parametrize(("body", "message_mentions"), BAD_BODIES)
def test_a_bad_create_body_is_a_400_that_says_what_is_wrong(
    client: TestClient, runtime: FakeSandboxRuntime, body: Any, message_mentions: str
) -> None:
    response = client.post("/sandboxes", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert message_mentions in response.json()["error"]["message"]
    assert runtime.live == set()


@pytest.mark.parametrize("raw", [
    b"{", b"language=python", b'{"timeout": NaN}', b'{"a": 1, "a": 2}', b"[" * 100_000,
    b'{"language": "\xff"}',
])
def test_a_body_that_is_not_json_is_a_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/sandboxes", content=raw,
                           headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_a_create_body_over_the_limit_is_a_413(start_service: StartService) -> None:
    client = start_service(max_body_bytes=64).client

    response = client.post("/sandboxes", json={"env": {"A": "x" * 100}})

    assert response.status_code == 413


def test_create_takes_no_query_parameters(client: TestClient) -> None:
    response = client.post("/sandboxes?language=python", json={})

    assert response.status_code == 400
    assert "takes no query parameters" in response.json()["error"]["message"]


def test_inspect_answers_with_the_record(client: TestClient) -> None:
    sandbox_id = create_session(client)

    response = client.get(f"/sandboxes/{sandbox_id}")

    assert response.status_code == 200
    assert response.json()["sandbox_id"] == sandbox_id
    assert set(response.json()) >= {"sandbox_id", "state", "language", "created_at",
                                    "updated_at", "exit_code", "limits", "reason"}


def test_an_unknown_sandbox_is_a_404(client: TestClient) -> None:
    response = client.get(f"/sandboxes/{'a' * 24}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_list_and_the_readme_list_answer_every_sandbox(client: TestClient) -> None:
    first, second = create_session(client), create_session(client)

    for path in ("/sandboxes", "/list"):
        response = client.get(path)

        assert response.status_code == 200
        assert list(response.json()) == ["sandboxes"]
        assert [record["sandbox_id"] for record in response.json()["sandboxes"]] == [
            first, second]


def test_list_filters_by_state(client: TestClient) -> None:
    running, suspended = create_session(client), create_session(client)
    client.post(f"/sandboxes/{suspended}/suspend")

    def ids(state: str) -> list[str]:
        answer = client.get(f"/sandboxes?state={state}").json()["sandboxes"]
        return [record["sandbox_id"] for record in answer]

    assert ids("running") == [running]
    assert ids("suspended") == [suspended]
    assert ids("exited") == ids("failed") == ids("creating") == []


@pytest.mark.parametrize("query", ["state=deleted", "state=", "status=running",
                                   "state=running&state=exited"])
def test_list_refuses_a_bad_filter(client: TestClient, query: str) -> None:
    response = client.get(f"/sandboxes?{query}")

    assert response.status_code == 400


def test_creating_beyond_the_running_limit_is_a_429_with_retry_after(
    start_service: StartService,
) -> None:
    client = start_service(max_running_sandboxes=1).client
    first = create_session(client)

    refused = client.post("/sandboxes", json={})
    client.post(f"/sandboxes/{first}/suspend")
    accepted = client.post("/sandboxes", json={})

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "at_capacity"
    assert refused.headers["Retry-After"] == "5"
    assert accepted.status_code == 201


def test_restore_beyond_the_running_limit_is_a_429(start_service: StartService) -> None:
    client = start_service(max_running_sandboxes=1).client
    first = create_session(client)
    client.post(f"/sandboxes/{first}/suspend")
    create_session(client)

    response = client.post(f"/sandboxes/{first}/restore")

    assert response.status_code == 429
    assert "Retry-After" in response.headers
    assert client.get(f"/sandboxes/{first}").json()["state"] == "suspended"
