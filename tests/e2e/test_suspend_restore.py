from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from e2e.support import create_session
from sandbox.adapters.fake import FakeSandboxRuntime

CODE = {"language": "bash", "code": "echo x\n"}


def allowed(header: str) -> set[str]:
    # Starlette keeps a route's methods in a set: their order in the header is not fixed.
    return {method.strip() for method in header.split(",")}


def test_a_session_lives_through_suspend_and_restore_until_deleted(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    sandbox_id = create_session(client)
    base = f"/sandboxes/{sandbox_id}"
    client.put(f"{base}/files/kept.bin", content=b"\x00\xffkept")

    suspended = client.post(f"{base}/suspend")
    exec_while_suspended = client.post(f"{base}/exec", json=CODE)
    restored = client.post(f"{base}/restore")
    kept = client.get(f"{base}/files/kept.bin")
    exec_after = client.post(f"{base}/exec", json=CODE)
    deleted = client.delete(base)
    gone = client.get(base)

    assert suspended.status_code == 200
    assert (suspended.json()["state"], suspended.json()["reason"]) == (
        "suspended", "suspended on request")
    assert exec_while_suspended.status_code == 409
    assert exec_while_suspended.json()["error"]["code"] == "invalid_state"
    assert restored.status_code == 200
    assert restored.json()["state"] == "running"
    assert kept.content == b"\x00\xffkept"
    assert exec_after.json()["stdout"] == "x\n"
    assert deleted.status_code == 200
    assert deleted.json() == {"sandbox_id": sandbox_id, "deleted": True}
    assert gone.status_code == 404
    assert runtime.live == set()
    assert client.get("/sandboxes").json() == {"sandboxes": []}


def test_suspending_twice_is_a_409(client: TestClient) -> None:
    sandbox_id = create_session(client)
    client.post(f"/sandboxes/{sandbox_id}/suspend")

    response = client.post(f"/sandboxes/{sandbox_id}/suspend")

    assert response.status_code == 409
    assert "suspended" in response.json()["error"]["message"]


def test_restoring_a_running_sandbox_is_a_409(client: TestClient) -> None:
    sandbox_id = create_session(client)

    response = client.post(f"/sandboxes/{sandbox_id}/restore")

    assert response.status_code == 409


def test_a_suspended_sandbox_can_be_deleted(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    sandbox_id = create_session(client)
    client.post(f"/sandboxes/{sandbox_id}/suspend")

    response = client.delete(f"/sandboxes/{sandbox_id}")

    assert response.status_code == 200
    assert client.get(f"/sandboxes/{sandbox_id}").status_code == 404


def test_deleting_an_unknown_sandbox_is_a_404(client: TestClient) -> None:
    sandbox_id = create_session(client)
    client.delete(f"/sandboxes/{sandbox_id}")

    response = client.delete(f"/sandboxes/{sandbox_id}")

    assert response.status_code == 404


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_the_readme_calls_suspend_restore_and_delete(client: TestClient, method: str) -> None:
    sandbox_id = create_session(client)

    suspended = client.request(method, f"/suspend/{sandbox_id}")
    restored = client.request(method, f"/restore/{sandbox_id}")
    deleted = client.request(method, f"/delete/{sandbox_id}")

    assert (suspended.status_code, suspended.json()["state"]) == (200, "suspended")
    assert (restored.status_code, restored.json()["state"]) == (200, "running")
    assert deleted.json() == {"sandbox_id": sandbox_id, "deleted": True}
    assert client.get(f"/sandboxes/{sandbox_id}").status_code == 404


@pytest.mark.parametrize("call", ["suspend", "restore", "delete"])
def test_the_readme_calls_never_act_on_head(client: TestClient, call: str) -> None:
    sandbox_id = create_session(client)

    response = client.head(f"/{call}/{sandbox_id}")

    assert response.status_code == 405
    assert allowed(response.headers["Allow"]) == {"GET", "POST"}
    assert client.get(f"/sandboxes/{sandbox_id}").json()["state"] == "running"


def test_the_readme_calls_answer_the_same_errors(client: TestClient) -> None:
    sandbox_id = create_session(client)

    unknown = client.get(f"/suspend/{'d' * 24}")
    wrong_state = client.get(f"/restore/{sandbox_id}")

    assert unknown.status_code == 404
    assert wrong_state.status_code == 409


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/sandboxes", "GET, HEAD, POST"),
    ("POST", "/sandboxes/{id}", "DELETE, GET, HEAD"),
    ("GET", "/sandboxes/{id}/suspend", "POST"),
    ("DELETE", "/sandboxes/{id}/restore", "POST"),
    ("POST", "/sandboxes/{id}/output", "GET, HEAD"),
    ("DELETE", "/delete/{id}", "GET, POST"),
    ("POST", "/list", "GET, HEAD"),
])
def test_a_wrong_method_is_a_405_naming_every_allowed_one(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    sandbox_id = create_session(client)

    response = client.request(method, path.format(id=sandbox_id))

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert allowed(response.headers["Allow"]) == allowed(allow)
