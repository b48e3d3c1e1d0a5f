"""Bearer tokens: every route but /healthz needs one, checked before any body is read."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from starlette.types import Message
from structlog.typing import EventDict

from e2e.support import StartService, post_scope, route_calls, running
from sandbox.settings import Settings

TOKEN = "first-token-0123456789"
OTHER_TOKEN = "second-token-9876543210"
WRONG_TOKEN = "not-a-token-of-this-server"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


PROTECTED = [call for call in route_calls() if call[1] != "/healthz"]


@pytest.fixture
def client(start_service: StartService) -> TestClient:
    return start_service(api_tokens=f"{TOKEN},{OTHER_TOKEN}").client


def test_every_route_but_healthz_needs_a_token(client: TestClient) -> None:
    for method, path in PROTECTED:
        response = client.request(method, path, content=b'print("hi")\n')

        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "X-Request-ID" in response.headers
        if method != "HEAD":
            assert response.json()["error"]["code"] == "unauthorized"


def test_every_route_but_healthz_refuses_a_wrong_token(client: TestClient) -> None:
    for method, path in PROTECTED:
        response = client.request(method, path, headers={"Authorization": f"Bearer {WRONG_TOKEN}"})

        assert response.status_code == 401, (method, path)


@pytest.mark.parametrize(
    "authorization",
    [f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", TOKEN, "Bearer ,"],
)
def test_anything_but_a_configured_bearer_token_is_refused(
    client: TestClient, authorization: str
) -> None:
    response = client.get("/list", headers={"Authorization": authorization})

    assert response.status_code == 401


def test_healthz_needs_no_token(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.head("/healthz").status_code == 200


def test_an_unknown_route_is_refused_before_it_is_looked_up(client: TestClient) -> None:
    assert client.get("/no/such/route").status_code == 401
    assert client.get("/no/such/route", headers=AUTH).status_code == 404


@pytest.mark.parametrize("token", [TOKEN, OTHER_TOKEN])
def test_every_configured_token_is_accepted(client: TestClient, token: str) -> None:
    response = client.post("/execute?language=python", content=b'print("hi")\n',
                           headers={"Authorization": f"bearer  {token} "})

    assert response.status_code == 200
    assert response.json()["stdout"] == "hi\n"


def test_a_sandbox_is_managed_with_the_token(client: TestClient) -> None:
    created = client.post("/sandboxes", headers=AUTH)
    sandbox_id = created.json()["sandbox_id"]

    assert created.status_code == 201
    assert client.get(f"/sandboxes/{sandbox_id}").status_code == 401
    assert client.get(f"/sandboxes/{sandbox_id}", headers=AUTH).json()["state"] == "running"
    assert client.get("/metrics", headers=AUTH).status_code == 200
    assert client.get("/openapi.json", headers=AUTH).status_code == 200


@pytest.mark.anyio
async def test_a_refused_request_is_answered_before_its_body_is_read(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(settings, api_tokens=TOKEN)
    scope = post_scope("/execute", b"language=python")
    # Far over the body limit: without the token check first, this would be a 413.
    scope["headers"] = [(b"host", b"localhost"), (b"content-length", b"10000000000")]
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the body of a refused request was read")

    async def send(message: Message) -> None:
        sent.append(message)

    async with running(settings) as (app, runtime):
        await app(scope, receive, send)

        assert runtime.runs == []
    start, body = sent
    assert start["status"] == 401
    assert (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"])["error"]["code"] == "unauthorized"


def test_the_tokens_never_reach_the_log(
    start_service: StartService, logs: list[EventDict]
) -> None:
    client = start_service(api_tokens=TOKEN).client

    client.post("/execute?language=python", content=b'print("hi")\n', headers=AUTH)
    client.get("/list", headers={"Authorization": f"Bearer {WRONG_TOKEN}"})
    client.get("/list")

    text = repr(logs)
    assert TOKEN not in text
    assert WRONG_TOKEN not in text
    mode = next(entry for entry in logs if entry["event"] == "auth.mode")
    assert (mode["mode"], mode["tokens"]) == ("tokens", 1)
    refusals = [entry["reason"] for entry in logs if entry["event"] == "auth.refused"]
    assert refusals == ["wrong token", "no bearer token"]
    statuses = [entry["status"] for entry in logs if entry["event"] == "http.request"]
    assert statuses == [200, 401, 401]


def test_without_tokens_the_mode_is_logged_and_no_token_is_asked_for(
    start_service: StartService, logs: list[EventDict]
) -> None:
    client = start_service().client

    assert client.get("/list").status_code == 200
    mode = next(entry for entry in logs if entry["event"] == "auth.mode")
    assert mode["mode"] == "unauthenticated-loopback"


def run_server(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    inherited = {name: value for name, value in os.environ.items()
                 if not name.startswith("SANDBOX_")}
    env = {**inherited, "SANDBOX_RUNTIME": "fake", "SANDBOX_STATE_DIR": str(tmp_path),
           **variables}
    return subprocess.run([sys.executable, "-m", "sandbox"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_server_refuses_to_serve_beyond_loopback_without_tokens(tmp_path: Path) -> None:
    finished = run_server(tmp_path, SANDBOX_HOST="0.0.0.0")

    assert finished.returncode == 2
    assert "SANDBOX_API_TOKENS" in finished.stderr
    assert "SANDBOX_ALLOW_UNAUTHENTICATED" in finished.stderr


def test_the_server_refuses_a_short_token_without_printing_it(tmp_path: Path) -> None:
    finished = run_server(tmp_path, SANDBOX_API_TOKENS="tiny-secret")

    assert finished.returncode == 2
    assert "16 characters" in finished.stderr
    assert "tiny-secret" not in finished.stderr + finished.stdout
