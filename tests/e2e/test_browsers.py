"""Requests a web page can make a browser send. A page may POST a script to a server on
loopback without any CORS preflight (a `text/plain` body is a "simple" request), and a page
on a name that resolves to 127.0.0.1 (DNS rebinding) can read the answers. The server refuses
any request whose Origin it was not told to allow, and any Host that is not one of its names,
with or without tokens, before it reads a body or runs anything."""

from __future__ import annotations

import dataclasses
import json

import httpx
import pytest
from starlette.testclient import TestClient
from starlette.types import Message

from e2e.support import StartService, post_scope, route_calls, running
from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.settings import Settings

EVIL_ORIGIN = "http://evil.example"
APP_ORIGIN = "https://app.example"
TOKEN = "browser-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCRIPT = b'print("hi")\n'
CALLS = route_calls()


def refusal_code(response: httpx.Response, method: str) -> str | None:
    return None if method == "HEAD" else str(response.json()["error"]["code"])


def assert_nothing_happened(client: TestClient, runtime: FakeSandboxRuntime) -> None:
    assert runtime.runs == []
    assert runtime.live == set()
    assert client.get("/list").json() == {"sandboxes": []}


# Origin -------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", [EVIL_ORIGIN, "null", "http://localhost:8080",
                                    "http://127.0.0.1:8080"])
def test_a_request_from_a_foreign_origin_is_refused_on_every_route(
    client: TestClient, runtime: FakeSandboxRuntime, origin: str
) -> None:
    for method, path in CALLS:
        response = client.request(method, path, content=SCRIPT, headers={"Origin": origin})

        assert response.status_code == 403, (method, path, response.text)
        assert refusal_code(response, method) in (None, "origin_not_allowed")
        assert response.headers["Connection"] == "close"
        assert "Access-Control-Allow-Origin" not in response.headers
    assert_nothing_happened(client, runtime)


def test_the_refused_simple_post_of_a_web_page_runs_nothing(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    response = client.post("/execute?language=python", content=SCRIPT,
                           headers={"Origin": EVIL_ORIGIN, "Content-Type": "text/plain"})

    assert response.status_code == 403
    assert response.json()["error"] == {
        "code": "origin_not_allowed",
        "message": "requests from the web origin http://evil.example are not allowed "
                   "(SANDBOX_CORS_ORIGINS names the origins that are)",
    }
    assert_nothing_happened(client, runtime)


def test_a_request_without_origin_is_served(client: TestClient) -> None:
    response = client.post("/execute?language=python", content=SCRIPT)

    assert response.status_code == 200
    assert response.json()["stdout"] == "hi\n"


def test_with_a_token_a_foreign_origin_is_still_refused(
    start_service: StartService,
) -> None:
    service = start_service(api_tokens=TOKEN)

    response = service.client.post("/execute?language=python", content=SCRIPT,
                                    headers={"Origin": EVIL_ORIGIN, **AUTH})

    assert response.status_code == 403
    assert service.runtime.runs == []


# Host ---------------------------------------------------------------------------------------

FOREIGN_HOSTS = ["evil.example:8080", "evil.example", "localhost.evil.example",
                 "127.0.0.1.evil.example:8080", "192.168.1.10:8080", "[2001:db8::1]:8080",
                 "testserver"]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_a_foreign_host_is_refused_on_every_route_but_healthz(
    client: TestClient, runtime: FakeSandboxRuntime, host: str
) -> None:
    for method, path in CALLS:
        response = client.request(method, path, content=SCRIPT, headers={"Host": host})

        expected = 200 if path == "/healthz" else 403
        assert response.status_code == expected, (method, path, response.text)
        if expected == 403:
            assert refusal_code(response, method) in (None, "host_not_allowed")
    assert_nothing_happened(client, runtime)


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "LocalHost:1", "127.0.0.1",
                                  "127.0.0.1:8080", "127.1.2.3:80", "[::1]", "[::1]:8080"])
def test_loopback_names_are_served_on_any_port(client: TestClient, host: str) -> None:
    response = client.get("/list", headers={"Host": host})

    assert response.status_code == 200


def test_the_listening_host_and_the_allowed_hosts_are_served(
    start_service: StartService,
) -> None:
    client = start_service(host="127.0.0.5",
                           allowed_hosts="sandbox.internal, API.example.com").client

    statuses = {host: client.get("/list", headers={"Host": host}).status_code
                for host in ("127.0.0.5:8080", "sandbox.internal:8080", "api.example.com",
                             "other.example.com", "sandbox.internal.evil.example")}

    assert statuses == {"127.0.0.5:8080": 200, "sandbox.internal:8080": 200,
                        "api.example.com": 200, "other.example.com": 403,
                        "sandbox.internal.evil.example": 403}


def test_a_star_serves_any_host_but_still_checks_the_origin(
    start_service: StartService,
) -> None:
    client = start_service(allowed_hosts="*").client

    served = client.get("/list", headers={"Host": "sandbox-abc-uc.a.run.app"})
    cross_origin = client.get("/list", headers={"Host": "sandbox-abc-uc.a.run.app",
                                                "Origin": EVIL_ORIGIN})

    assert served.status_code == 200
    assert cross_origin.status_code == 403


def test_with_a_token_a_foreign_host_is_still_refused(start_service: StartService) -> None:
    client = start_service(api_tokens=TOKEN).client

    response = client.get("/list", headers={"Host": "evil.example:8080", **AUTH})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "host_not_allowed"


# Both are refused before the body is read --------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("header", [(b"origin", EVIL_ORIGIN.encode()),
                                    (b"host", b"evil.example:8080")])
async def test_a_refused_request_is_answered_before_its_body_is_read(
    settings: Settings, header: tuple[bytes, bytes]
) -> None:
    settings = dataclasses.replace(settings, api_tokens=TOKEN)
    scope = post_scope("/execute", b"language=python")
    scope["headers"] = [*(pair for pair in scope["headers"] if pair[0] != header[0]), header,
                        (b"authorization", f"Bearer {TOKEN}".encode()),
                        (b"content-length", b"10000000000")]
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the body of a refused request was read")

    async def send(message: Message) -> None:
        sent.append(message)

    async with running(settings) as (app, runtime):
        await app(scope, receive, send)

        assert runtime.runs == []
    start, body = sent
    assert start["status"] == 403
    assert (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"])["error"]["code"] in ("origin_not_allowed",
                                                         "host_not_allowed")


# CORS, when the operator allows origins ---------------------------------------------------


def preflight(client: TestClient, origin: str, method: str = "POST") -> httpx.Response:
    return client.options("/execute", headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type",
    })


def test_without_allowed_origins_a_preflight_is_refused(client: TestClient) -> None:
    response = preflight(client, APP_ORIGIN)

    assert response.status_code == 403


def test_a_preflight_from_an_allowed_origin_is_answered_without_a_token(
    start_service: StartService,
) -> None:
    client = start_service(api_tokens=TOKEN, cors_origins=f"{APP_ORIGIN}, http://x.example:3000"
                           ).client

    response = client.options("/sandboxes/" + "0" * 24 + "/files/a.txt", headers={
        "Origin": APP_ORIGIN, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization, content-type",
    })

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "PUT" in response.headers["Access-Control-Allow-Methods"]
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()


def test_a_preflight_from_another_origin_is_refused(start_service: StartService) -> None:
    client = start_service(cors_origins=APP_ORIGIN).client

    response = client.options("/execute", headers={
        "Origin": EVIL_ORIGIN, "Access-Control-Request-Method": "POST"})

    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response.headers


def test_an_allowed_origin_is_served_and_told_it_may_read_the_answer(
    start_service: StartService,
) -> None:
    service = start_service(api_tokens=TOKEN, cors_origins=APP_ORIGIN)

    answered = service.client.post("/execute?language=python", content=SCRIPT,
                                   headers={"Origin": APP_ORIGIN, **AUTH})
    unauthorized = service.client.get("/list", headers={"Origin": APP_ORIGIN})

    assert answered.status_code == 200
    assert answered.json()["stdout"] == "hi\n"
    assert answered.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "X-Request-ID" in answered.headers["Access-Control-Expose-Headers"]
    assert unauthorized.status_code == 401  # and the page may read why
    assert unauthorized.headers["Access-Control-Allow-Origin"] == APP_ORIGIN


def test_an_options_request_that_is_no_preflight_is_a_405(start_service: StartService) -> None:
    client = start_service(cors_origins=APP_ORIGIN).client

    response = client.options("/execute")

    assert response.status_code == 405
