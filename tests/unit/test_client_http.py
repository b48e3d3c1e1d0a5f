"""The SDK's calls: configuration, errors named after the API's codes, bounded retries of
429 answers after their Retry-After, explicit timeouts."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from client_support import SANDBOX_ID, URL, FakeApi, error, record, result

import sandbox_client
from sandbox_client import (
    CapacityExceeded,
    CheckpointMismatch,
    ConnectionFailed,
    FileNotFound,
    Forbidden,
    InvalidRequest,
    InvalidState,
    NotFound,
    PackageInstallFailed,
    PayloadTooLarge,
    RequestTimeout,
    RuntimeFailure,
    Sandbox,
    SandboxError,
    SandboxNotFound,
    ServerError,
    Unauthorized,
    run,
)
from sandbox_client import _http as http_module
from sandbox_client.config import ConnectionConfig


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits between retries, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(http_module.time, "sleep", waited.append)
    return waited


@pytest.mark.parametrize(("status", "code", "kind"), [
    (400, "invalid_request", InvalidRequest),
    (401, "unauthorized", Unauthorized),
    (404, "not_found", SandboxNotFound),
    (404, "file_not_found", FileNotFound),
    (409, "invalid_state", InvalidState),
    (409, "checkpoint_mismatch", CheckpointMismatch),
    (413, "payload_too_large", PayloadTooLarge),
    (422, "package_resolution_failed", PackageInstallFailed),
    (503, "runtime_failure", RuntimeFailure),
    (500, "internal", ServerError),
    (403, "host_not_allowed", Forbidden),
    (404, "some_new_code", NotFound),
    (502, "some_new_code", ServerError),
    (418, "teapot", SandboxError),
])
def test_an_error_answer_raises_the_exception_named_after_its_code(
    status: int, code: str, kind: type[SandboxError]
) -> None:
    api = FakeApi().on("GET", f"/sandboxes/{SANDBOX_ID}", error(status, code, "said why"))

    with pytest.raises(SandboxError) as raised:
        Sandbox.connect(SANDBOX_ID, config=api.config())

    assert type(raised.value) is kind
    assert (raised.value.code, raised.value.message, raised.value.status) == (
        code, "said why", status)


def test_an_answer_that_is_not_json_still_raises_by_its_status() -> None:
    api = FakeApi().on("GET", "/sandboxes", status_code=502, text="<html>bad gateway</html>")

    with pytest.raises(ServerError) as raised:
        Sandbox.list(config=api.config())

    assert raised.value.code == "http_502"
    assert "bad gateway" in raised.value.message


def test_a_429_is_retried_after_its_retry_after(sleeps: list[float]) -> None:
    api = (FakeApi()
           .on("POST", "/execute", error(429, "at_capacity", "full", {"Retry-After": "2"}))
           .on("POST", "/execute", error(429, "at_capacity", "full", {"Retry-After": "1"}))
           .on("POST", "/execute", json=result(stdout="done\n")))

    done = run("print('done')", config=api.config())

    assert done.stdout == "done\n"
    assert sleeps == [2.0, 1.0]
    assert len(api.requests) == 3
    assert {request.content for request in api.requests} == {b"print('done')"}


def test_retries_are_bounded_and_the_last_429_is_raised_with_its_retry_after(
    sleeps: list[float],
) -> None:
    api = FakeApi().on("POST", "/sandboxes",
                       error(429, "at_capacity", "full", {"Retry-After": "5"}))

    with pytest.raises(CapacityExceeded) as raised:
        Sandbox.create(config=api.config(max_retries=2))

    assert raised.value.retry_after == 5.0
    assert sleeps == [5.0, 5.0]
    assert len(api.requests) == 3


def test_a_long_retry_after_is_waited_at_most_the_configured_wait(sleeps: list[float]) -> None:
    api = (FakeApi()
           .on("GET", "/sandboxes", error(429, "at_capacity", "full", {"Retry-After": "3600"}))
           .on("GET", "/sandboxes", json={"sandboxes": []}))
    seen: list[tuple[float, str]] = []

    Sandbox.list(config=api.config(max_retry_wait=7.0,
                                   on_retry=lambda wait, why: seen.append((wait, why))))

    assert sleeps == [7.0]
    assert seen == [(7.0, "full")]


def test_other_errors_are_not_retried(sleeps: list[float]) -> None:
    api = FakeApi().on("POST", "/sandboxes", error(503, "runtime_failure"))

    with pytest.raises(RuntimeFailure):
        Sandbox.create(config=api.config())

    assert (len(api.requests), sleeps) == (1, [])


def test_url_and_token_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_URL", "http://elsewhere.test:9000/")
    monkeypatch.setenv("SANDBOX_API_TOKEN", "t" * 20)

    config = ConnectionConfig.resolve()

    assert config.url == "http://elsewhere.test:9000"
    assert config.headers()["Authorization"] == "Bearer " + "t" * 20


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_URL", "http://elsewhere.test:9000")
    monkeypatch.delenv("SANDBOX_API_TOKEN", raising=False)

    config = ConnectionConfig.resolve(url="http://here.test", api_token="secret")

    assert (config.url, config.api_token) == ("http://here.test", "secret")
    assert "Authorization" not in ConnectionConfig.resolve().headers()


def test_the_token_is_sent_as_a_bearer_token() -> None:
    api = FakeApi().on("GET", "/sandboxes", json={"sandboxes": []})

    Sandbox.list(config=api.config(api_token="s" * 16))

    assert api.last().headers["Authorization"] == "Bearer " + "s" * 16


def timeouts(request: httpx.Request) -> dict[str, Any]:
    limits: dict[str, Any] = request.extensions["timeout"]
    return limits


def test_a_call_that_runs_code_waits_its_time_limit_on_top_of_the_exchange() -> None:
    api = (FakeApi().on("POST", "/execute", json=result())
           .on("POST", f"/sandboxes/{SANDBOX_ID}/exec", json=result())
           .on("GET", f"/sandboxes/{SANDBOX_ID}", json=record()))
    config = api.config(request_timeout=20.0)

    run("print(1)", timeout=5, config=config)
    plain_run = timeouts(api.last())
    run("print(1)", timeout=5, packages=["six"], config=config)
    with_packages = timeouts(api.last())
    sandbox = Sandbox.connect(SANDBOX_ID, config=config)
    connect = timeouts(api.last())
    sandbox.commands.run("ls", timeout=40)
    exec_call = timeouts(api.last())

    assert plain_run == {"connect": 10.0, "read": 25.0, "write": 20.0, "pool": 20.0}
    assert with_packages["read"] == 325.0
    assert connect["read"] == 20.0
    assert exec_call["read"] == 60.0


def test_an_unreachable_service_is_a_connection_failure() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    config = ConnectionConfig(url=URL, transport=httpx.MockTransport(refuse))

    with pytest.raises(ConnectionFailed, match="cannot reach the service at http://sandbox.test"):
        Sandbox.list(config=config)


def test_a_call_out_of_time_is_a_request_timeout() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    config = ConnectionConfig(url=URL, transport=httpx.MockTransport(slow))

    with pytest.raises(RequestTimeout):
        run("print(1)", config=config)


def test_the_sdk_imports_nothing_but_httpx_and_the_standard_library() -> None:
    package = Path(sandbox_client.__file__).parent
    imported: set[str] = set()
    for module in package.glob("*.py"):  # the sbx command (cli/) has click and rich
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])

    assert imported - set(sys.stdlib_module_names) == {"httpx", "sandbox_client"}
