"""Clients that send what no honest client would: ids next to real ones, unknown languages,
bodies that are empty, huge or not UTF-8, wrong methods, odd content types, abused headers, and
many calls on one sandbox at once. Each gets a 4xx in the error shape; none breaks the server.
(Hostile ids of other shapes: test_hostile_ids.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from e2e.support import StartService, create_session, uvicorn_serving
from sandbox.adapters.fake import FakeBehaviour, FakeSandboxRuntime
from sandbox.entrypoints.openapi import DOCUMENT
from sandbox.settings import Settings

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
# The calls of the original README change state on GET: Starlette must not add HEAD to them.
NO_HEAD = {"/suspend/{sandbox_id}", "/restore/{sandbox_id}", "/delete/{sandbox_id}"}
ID_CALLS = [(method.upper(), path) for path, item in DOCUMENT["paths"].items()
            if "{sandbox_id}" in path for method in item]


def url(path: str, sandbox_id: str) -> str:
    return (path.replace("{sandbox_id}", sandbox_id).replace("{path}", "notes.txt")
            .replace("{context_id}", "0" * 16))


def assert_error_shape(response: Any, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"}
    assert isinstance(error["message"], str)
    if code is not None:
        assert error["code"] == code


@pytest.fixture
def sandbox_id(client: TestClient) -> str:
    sandbox_id = create_session(client)
    client.put(f"/sandboxes/{sandbox_id}/files/kept.txt", content=b"kept")
    return sandbox_id


# Ids ----------------------------------------------------------------------------------------


def near_ids(real: str) -> list[str]:
    """Ids a client could make from a real one: runsc would take a prefix for the real one."""
    other_last = "0" if real[-1] != "0" else "1"
    return [
        real[:-1], real[:1], real[:12], real + "0", real.upper(), real[:-1] + other_last,
        "0" * 24, "f" * 24, real[::-1] if real[::-1] != real else "e" * 24,
        f"{real}%00", f"{real}%0A", f"%20{real}", f"{real}%2F..", f"..%2F{real}",
    ]


@pytest.mark.parametrize(("method", "path"), ID_CALLS)
def test_an_id_next_to_a_real_one_is_a_404_and_leaves_the_real_one_alone(
    client: TestClient, runtime: FakeSandboxRuntime, sandbox_id: str, method: str, path: str
) -> None:
    for near in near_ids(sandbox_id):
        response = client.request(method, url(path, near), json={"argv": ["ls"]})

        assert_error_shape(response, 404, "not_found")

    assert client.get(f"/sandboxes/{sandbox_id}").json()["state"] == "running"
    assert client.get(f"/sandboxes/{sandbox_id}/files/kept.txt").content == b"kept"
    assert runtime.live == {sandbox_id}


def raw_request(address: tuple[str, int], method: str, target: str) -> tuple[int, bytes]:
    """A request whose target is sent as written: no client library may tidy `..` away."""
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        connection.putheader("Content-Length", "0")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# Each with a method its route takes, so that only the id (or the lack of one) can refuse it.
LITERAL_TARGETS = [
    ("GET", "/sandboxes/../../etc"), ("DELETE", "/sandboxes/../../etc/passwd"),
    ("GET", "/sandboxes/--root=/"), ("POST", "/sandboxes/--root=/tmp/x/exec"),
    ("GET", "/suspend/--root=/"), ("POST", "/delete/../../etc"), ("GET", "/restore/./"),
    ("POST", "/sandboxes/./suspend"), ("POST", "/sandboxes/../restore"),
    ("POST", "/sandboxes//restore"), ("GET", "/delete//"),
    ("PUT", "/sandboxes/../files/etc/passwd"), ("GET", "/sandboxes/.%2e/output"),
    ("GET", "/sandboxes/" + "x" * 10_000), ("POST", "/suspend/" + "0" * 10_000),
]


def test_literal_dots_slashes_and_options_in_the_path_are_a_404_from_a_real_server(
    settings: Settings,
) -> None:
    with uvicorn_serving(settings) as address:
        answers = [raw_request(address, method, target) for method, target in LITERAL_TARGETS]

    assert [status for status, _ in answers] == [404] * len(LITERAL_TARGETS)
    assert all(b'"code":"not_found"' in body for _, body in answers)


# Languages ----------------------------------------------------------------------------------

UNKNOWN_LANGUAGES = ["ruby", "Python", "BASH", "python3", "sh", " bash", "python\n", "",
                     "pyth\u00f6n", "bash;id", "../bash", "x" * 10_000]


@pytest.mark.parametrize("language", UNKNOWN_LANGUAGES)
def test_an_unknown_language_is_a_400_wherever_a_language_is_named(
    client: TestClient, runtime: FakeSandboxRuntime, sandbox_id: str, language: str
) -> None:
    calls = [
        client.post("/execute", params={"language": language}, content=b"print(1)\n"),
        client.post("/execute", params={"language": language, "detach": "true"},
                    content=b"print(1)\n"),
        client.post(f"/sandboxes/{sandbox_id}/exec", params={"language": language},
                    content=b"echo 1\n", headers={"Content-Type": "text/plain"}),
        client.post(f"/sandboxes/{sandbox_id}/exec", json={"language": language,
                                                           "code": "echo 1\n"}),
        client.post("/sandboxes", json={"language": language}),
    ]

    for response in calls:
        assert_error_shape(response, 400, "invalid_request")
        assert "python, bash" in response.json()["error"]["message"]
        assert len(response.text) < 400
    assert runtime.runs == []
    assert runtime.live == {sandbox_id}
    assert [record["sandbox_id"] for record in client.get("/list").json()["sandboxes"]] == [
        sandbox_id]


# Bodies -------------------------------------------------------------------------------------

NOT_UTF8_SCRIPT = b"print('caf\xe9')\n# \xff\xfe\x80 \xc3\x28 \xed\xa0\x80\n"


def test_a_script_that_is_not_utf8_runs_as_the_bytes_sent(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    runtime.program(NOT_UTF8_SCRIPT, FakeBehaviour(stdout=b"ran the bytes\n"))

    response = client.post("/execute?language=python", content=NOT_UTF8_SCRIPT)

    assert response.status_code == 200
    assert response.json()["stdout"] == "ran the bytes\n"
    assert runtime.runs[0][1].source == NOT_UTF8_SCRIPT


def test_a_raw_exec_that_is_not_utf8_runs_as_the_bytes_sent(
    client: TestClient, runtime: FakeSandboxRuntime, sandbox_id: str
) -> None:
    runtime.program(NOT_UTF8_SCRIPT, FakeBehaviour(stdout=b"ran the bytes\n"))

    response = client.post(f"/sandboxes/{sandbox_id}/exec?language=python",
                           content=NOT_UTF8_SCRIPT,
                           headers={"Content-Type": "application/octet-stream"})

    assert response.status_code == 200
    assert response.json()["stdout"] == "ran the bytes\n"


NOT_UTF8_JSON = [
    '{"language": "bash"}'.encode("utf-16"),
    '{"language": "bash"}'.encode("utf-16-be"),
    '{"language": "bash"}'.encode("utf-32"),
    b'{"language": "b\xe4sh"}',
    b'{"language": "\xed\xa0\x80"}',  # an encoded lone surrogate
    b'{"\xff": 1}',
    b'{"\\ud800": 1}',  # valid JSON, but the name is no text
    b'{"env": {"\\udfff": "x"}}',
]


@pytest.mark.parametrize("body", NOT_UTF8_JSON)
def test_json_that_is_not_utf8_text_is_a_400(
    client: TestClient, runtime: FakeSandboxRuntime, sandbox_id: str, body: bytes
) -> None:
    json_type = {"Content-Type": "application/json"}

    created = client.post("/sandboxes", content=body, headers=json_type)
    executed = client.post(f"/sandboxes/{sandbox_id}/exec", content=body, headers=json_type)

    assert_error_shape(created, 400, "invalid_request")
    assert_error_shape(executed, 400, "invalid_request")
    assert runtime.live == {sandbox_id}


def test_json_with_a_utf8_byte_order_mark_is_accepted(client: TestClient) -> None:
    response = client.post("/sandboxes", content=b'\xef\xbb\xbf{"language": "bash"}',
                           headers={"Content-Type": "application/json"})

    assert response.status_code == 201
    assert response.json()["language"] == "bash"


@pytest.mark.parametrize("body", [b"", b"   \n", b"\x00", b"null", b"{}"])
def test_a_json_exec_without_a_command_is_a_400(
    client: TestClient, sandbox_id: str, body: bytes
) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/exec", content=body,
                           headers={"Content-Type": "application/json"})

    assert_error_shape(response, 400, "invalid_request")


def chunks_of(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body with no Content-Length: the server can only count it as it arrives."""
    for start in range(0, total, size):
        yield b"#" * min(size, total - start)


HUGE_BODIES = [
    ("POST", "/execute?language=python"),
    ("POST", "/execute?language=bash&detach=true"),
    ("POST", "/sandboxes"),
    ("POST", "/sandboxes/{sandbox_id}/exec"),
    ("POST", "/sandboxes/{sandbox_id}/exec?language=bash"),
    ("PUT", "/sandboxes/{sandbox_id}/files/huge.bin"),
]


@pytest.mark.parametrize(("method", "path"), HUGE_BODIES)
def test_a_huge_chunked_body_is_a_413_on_every_call_that_takes_one(
    start_service: StartService, method: str, path: str
) -> None:
    service = start_service(max_body_bytes=64 * 1024, max_file_bytes=64 * 1024)
    sandbox_id = create_session(service.client)
    content_type = "application/json" if path.endswith("exec") else "text/plain"

    response = service.client.request(method, url(path, sandbox_id),
                                      content=chunks_of(4 * 1024 * 1024),
                                      headers={"Content-Type": content_type})

    assert_error_shape(response, 413, "payload_too_large")
    assert response.headers["Connection"] == "close"
    assert service.runtime.runs == []
    assert service.runtime.live == {sandbox_id}
    assert len(service.client.get("/list").json()["sandboxes"]) == 1


# Methods and content types ------------------------------------------------------------------


def documented_methods() -> Iterator[tuple[str, str, set[str]]]:
    for path, item in DOCUMENT["paths"].items():
        allowed = {method.upper() for method in item}
        if "GET" in allowed and path not in NO_HEAD:
            allowed.add("HEAD")
        for method in METHODS:
            if method not in allowed:
                yield method, path, allowed


@pytest.mark.parametrize(("method", "path", "allowed"), list(documented_methods()))
def test_every_method_a_path_does_not_take_is_a_405_naming_those_it_does(
    client: TestClient, runtime: FakeSandboxRuntime, sandbox_id: str, method: str, path: str,
    allowed: set[str],
) -> None:
    response = client.request(method, url(path, sandbox_id), content=b'{"argv": ["ls"]}')

    assert_error_shape(response, 405, "method_not_allowed")
    assert {name.strip() for name in response.headers["Allow"].split(",")} == allowed
    assert client.get(f"/sandboxes/{sandbox_id}").json()["state"] == "running"
    assert runtime.live == {sandbox_id}


ODD_CONTENT_TYPES = ["application/json", "multipart/form-data; boundary=x",
                     "text/plain; charset=utf-16", "application/x-www-form-urlencoded",
                     "image/png", ";;;", "a" * 2000, "application/json; charset=latin-1",
                     "APPLICATION/JSON", "application/vnd.sandbox+json"]


@pytest.mark.parametrize("content_type", ODD_CONTENT_TYPES)
def test_a_script_runs_whatever_content_type_it_is_sent_with(
    client: TestClient, content_type: str
) -> None:
    response = client.post("/execute?language=bash", content=b"echo typed\n",
                           headers={"Content-Type": content_type})

    assert response.status_code == 200
    assert response.json()["stdout"] == "typed\n"


@pytest.mark.parametrize("content_type", ODD_CONTENT_TYPES)
def test_a_file_is_stored_as_the_bytes_sent_whatever_content_type(
    client: TestClient, sandbox_id: str, content_type: str
) -> None:
    data = b'{"not": "parsed"}\x00\xff'

    written = client.put(f"/sandboxes/{sandbox_id}/files/typed.bin", content=data,
                         headers={"Content-Type": content_type})
    read = client.get(f"/sandboxes/{sandbox_id}/files/typed.bin")

    assert written.status_code == 201
    assert read.content == data


@pytest.mark.parametrize(("content_type", "status", "stdout"), [
    # A JSON media type (any case, any parameters, any +json) is a JSON command ...
    ("application/json; charset=utf-8", 200, "json\n"),
    ("APPLICATION/JSON", 200, "json\n"),
    ("application/vnd.sandbox+json", 200, "json\n"),
    # ... anything else is a script named by ?language=, here missing.
    ("text/plain", 400, None),
    ("application/jsonx", 400, None),
    ("multipart/form-data; boundary=x", 400, None),
    ("", 400, None),
])
def test_exec_reads_json_only_under_a_json_media_type(
    client: TestClient, sandbox_id: str, content_type: str, status: int, stdout: str | None
) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/exec",
                           content=b'{"language": "bash", "code": "echo json"}',
                           headers={"Content-Type": content_type})

    assert response.status_code == status
    if stdout is None:
        assert_error_shape(response, 400, "invalid_request")
    else:
        assert response.json()["stdout"] == stdout


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_create_parses_its_body_as_json_whatever_content_type(
    client: TestClient, content_type: str
) -> None:
    as_json = client.post("/sandboxes", content=b'{"language": "bash"}',
                          headers={"Content-Type": content_type})
    as_form = client.post("/sandboxes", content=b"language=bash",
                          headers={"Content-Type": content_type})

    assert as_json.status_code == 201
    assert_error_shape(as_form, 400, "invalid_request")


# Headers ------------------------------------------------------------------------------------


def exchange(address: tuple[str, int], request: bytes) -> bytes:
    """Send raw bytes and read the whole answer; a server that hangs up early is no error."""
    with socket.create_connection(address, timeout=10) as connection:
        # It may answer and hang up before reading everything: the answer is still there.
        with contextlib.suppress(OSError):
            connection.sendall(request)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := connection.recv(65536):
                answer += chunk
        return answer


HEAD = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
ABUSED_HEADS = {
    "a header of a MiB": HEAD + b"X-Long: " + b"a" * (1 << 20) + b"\r\n\r\n",
    "a head that never ends": HEAD + b"X-Long: " + b"a" * 40_000,
    "a MiB of headers": HEAD + b"X-Many: a\r\n" * 100_000 + b"\r\n",
    "a NUL in a value": HEAD + b"X-Bad: a\x00b\r\n\r\n",
    "a space in a name": HEAD + b"X Bad: a\r\n\r\n",
    "no Host": b"GET /healthz HTTP/1.1\r\n\r\n",
    "two Content-Lengths": b"POST /execute?language=bash HTTP/1.1\r\nHost: localhost\r\n"
                           b"Content-Length: 6\r\nContent-Length: 9\r\n\r\necho 1",
    "a Content-Length that is no number": b"POST /execute?language=bash HTTP/1.1\r\n"
                                          b"Host: localhost\r\nContent-Length: six\r\n\r\necho 1",
    "an unknown Transfer-Encoding": b"POST /execute?language=bash HTTP/1.1\r\nHost: localhost\r\n"
                                    b"Transfer-Encoding: gzip\r\n\r\necho 1",
    "a request line of garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}


def test_abused_headers_are_refused_by_h11_and_the_server_serves_on(settings: Settings) -> None:
    with uvicorn_serving(settings) as address:
        answers = {name: exchange(address, request) for name, request in ABUSED_HEADS.items()}
        healthy = exchange(address, HEAD + b"Connection: close\r\n\r\n")

    status_lines = {name: answer.split(b"\r\n", 1)[0] for name, answer in answers.items()}
    refused = {b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 431 Request Header Fields Too Large"}
    assert {name: line in refused for name, line in status_lines.items()} == {
        name: True for name in ABUSED_HEADS}, status_lines
    assert healthy.startswith(b"HTTP/1.1 200 ")


def test_a_huge_request_id_is_replaced_not_echoed(settings: Settings) -> None:
    request = HEAD + b"X-Request-ID: " + b"r" * 10_000 + b"\r\nConnection: close\r\n\r\n"

    with uvicorn_serving(settings) as address:
        answer = exchange(address, request)

    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"rrrr" not in head
    assert len(head) < 1000


# Many calls on one sandbox at once ----------------------------------------------------------

THREADS = 16
CALLS_PER_THREAD = 12


def hammer(client: TestClient, sandbox_id: str, verbs: list[str], seed: int) -> Counter[str]:
    """THREADS threads, started together, each making random calls from verbs on one sandbox;
    the statuses seen, by verb."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def work(thread_seed: int) -> None:
        chooser = random.Random(thread_seed)
        try:
            start.wait(timeout=10)
            for _ in range(CALLS_PER_THREAD):
                verb = chooser.choice(verbs)
                response = (client.delete(f"/sandboxes/{sandbox_id}") if verb == "delete"
                            else client.post(f"/sandboxes/{sandbox_id}/{verb}"))
                with lock:
                    seen[f"{verb} {response.status_code}"] += 1
        except BaseException as error:  # reported below, in the test's own thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed + n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a call hung"
    assert errors == []
    return seen


def statuses(seen: Counter[str]) -> set[int]:
    return {int(key.split()[1]) for key in seen}


def leftovers_of(runtime: FakeSandboxRuntime) -> set[str]:
    return asyncio.run(runtime.leftover_ids())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concurrent_suspends_and_restores_of_one_sandbox_leave_it_whole(
    client: TestClient, runtime: FakeSandboxRuntime, settings: Settings, sandbox_id: str,
    seed: int,
) -> None:
    seen = hammer(client, sandbox_id, ["suspend", "restore"], seed)
    final = client.get(f"/sandboxes/{sandbox_id}").json()
    held = leftovers_of(runtime)
    images = [image.name for image in settings.checkpoints.iterdir()]
    live = set(runtime.live)
    if final["state"] == "suspended":
        client.post(f"/sandboxes/{sandbox_id}/restore")
    kept = client.get(f"/sandboxes/{sandbox_id}/files/kept.txt")

    assert statuses(seen) <= {200, 409}
    assert seen["suspend 200"] >= 1
    assert final["state"] in ("running", "suspended")
    assert live == ({sandbox_id} if final["state"] == "running" else set())
    # Its container or its image, never both, never none.
    if final["state"] == "running":
        assert (held, images) == ({sandbox_id}, [])
    else:
        assert held == set()
        assert [image.split("-")[1] for image in images] == [sandbox_id]
    assert kept.content == b"kept"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concurrent_suspends_restores_and_deletes_of_one_sandbox_end_with_nothing_left(
    client: TestClient, runtime: FakeSandboxRuntime, settings: Settings, sandbox_id: str,
    seed: int,
) -> None:
    seen = hammer(client, sandbox_id, ["suspend", "restore", "delete"], seed)

    assert statuses(seen) <= {200, 404, 409}
    assert seen["delete 200"] == 1
    assert client.get(f"/sandboxes/{sandbox_id}").status_code == 404
    assert runtime.live == set()
    assert leftovers_of(runtime) == set()
    assert client.get("/list").json() == {"sandboxes": []}
    assert not Path(settings.state_dir, "outputs", sandbox_id).exists()
