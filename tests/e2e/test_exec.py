from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from e2e.support import StartService, create_session, ndjson, wait_for_state
from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.domain.model import Outcome, Program
from sandbox.domain.ports import OutputSink


@pytest.fixture
def sandbox_id(client: TestClient) -> str:
    return create_session(client)


def test_exec_runs_json_code_and_answers_with_the_result(
    client: TestClient, sandbox_id: str
) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/exec",
                           json={"language": "python", "code": 'print("hi")\nexit(4)\n'})

    assert response.status_code == 200
    result = response.json()
    assert isinstance(result.pop("duration_ms"), int)
    assert result == {
        "sandbox_id": sandbox_id, "language": "python", "exit_code": 4, "timed_out": False,
        "oom_killed": False, "stdout": "hi\n", "stderr": "", "stdout_truncated": False,
        "stderr_truncated": False,
    }


def test_exec_runs_a_raw_script_named_by_the_query(client: TestClient, sandbox_id: str) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/exec?language=bash",
                           content=b"echo raw\n", headers={"Content-Type": "text/plain"})

    assert response.status_code == 200
    assert response.json()["stdout"] == "raw\n"
    assert response.json()["language"] == "bash"


def test_exec_runs_an_argv_program_with_stdin(
    client: TestClient, runtime: FakeSandboxRuntime, sandbox_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[Program, bytes, float]] = []
    real_exec = runtime.exec

    async def recording(box: str, program: Program, sink: OutputSink, stdin: bytes,
                        timeout_s: float) -> Outcome:
        seen.append((program, stdin, timeout_s))
        return await real_exec(box, program, sink, stdin, timeout_s)

    monkeypatch.setattr(runtime, "exec", recording)

    response = client.post(f"/sandboxes/{sandbox_id}/exec",
                           json={"argv": ["ls", "-l", "/workspace"], "stdin": "in", "timeout": 7})

    assert response.status_code == 200
    assert response.json()["language"] == "argv"
    [(program, stdin, timeout_s)] = seen
    assert (program.language, program.argv) == (None, ("ls", "-l", "/workspace"))
    assert (stdin, timeout_s) == (b"in", 7)


@pytest.mark.parametrize(("cwd", "folder"), [
    ("/tmp", "/tmp"), ("data/in", "/workspace/data/in"), ("/tmp/../etc", "/etc"),
])
def test_exec_takes_its_own_environment_and_folder(
    client: TestClient, runtime: FakeSandboxRuntime, monkeypatch: pytest.MonkeyPatch,
    cwd: str, folder: str,
) -> None:
    sandbox_id = create_session(client, env={"COLOUR": "blue"})
    seen: list[Program] = []
    real_exec = runtime.exec

    async def recording(box: str, program: Program, sink: OutputSink, stdin: bytes,
                        timeout_s: float) -> Outcome:
        seen.append(program)
        return await real_exec(box, program, sink, stdin, timeout_s)

    monkeypatch.setattr(runtime, "exec", recording)

    response = client.post(f"/sandboxes/{sandbox_id}/exec", json={
        "argv": ["pwd"], "env": {"COLOUR": "red", "SIZE": "L"}, "cwd": cwd})
    plain = client.post(f"/sandboxes/{sandbox_id}/exec", json={"argv": ["pwd"]})

    assert (response.status_code, plain.status_code) == (200, 200)
    assert (seen[0].env, seen[0].cwd) == ((("COLOUR", "red"), ("SIZE", "L")), folder)
    assert (seen[1].env, seen[1].cwd) == ((), None)


def test_exec_streams_ndjson_like_execute(client: TestClient, sandbox_id: str) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/exec?stream=true",
                           json={"language": "bash", "code": "echo one\necho two >&2\n"})

    assert response.headers["Content-Type"] == "application/x-ndjson"
    events = ndjson(response.text)
    assert [event["type"] for event in events] == ["start", "stdout", "stderr", "exit"]
    assert events[0] == {"type": "start", "sandbox_id": sandbox_id}
    assert events[-1]["exit_code"] == 0


def test_exec_streams_a_raw_script_too(client: TestClient, sandbox_id: str) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/exec?language=python&stream=true",
                           content=b'print("x")\n')

    assert [event["type"] for event in ndjson(response.text)] == ["start", "stdout", "exit"]


def test_an_exec_over_its_timeout_times_out_and_the_sandbox_lives_on(
    client: TestClient, sandbox_id: str
) -> None:
    slow = client.post(f"/sandboxes/{sandbox_id}/exec",
                       json={"language": "bash", "code": "sleep 5\n", "timeout": 0.2})
    after = client.post(f"/sandboxes/{sandbox_id}/exec?language=bash&timeout=2",
                        content=b"echo alive\n")

    assert slow.json()["timed_out"] is True
    assert after.json()["stdout"] == "alive\n"
    assert client.get(f"/sandboxes/{sandbox_id}").json()["state"] == "running"


def test_the_sessions_timeout_is_the_default_per_exec(client: TestClient) -> None:
    sandbox_id = create_session(client, timeout=0.2)

    response = client.post(f"/sandboxes/{sandbox_id}/exec",
                           json={"language": "bash", "code": "sleep 5\n"})

    assert response.json()["timed_out"] is True


BAD_JSON_EXECS: list[tuple[Any, str]] = [
    ({"language": "python"}, "either code (with language) or argv"),
    ({"code": "x", "argv": ["ls"], "language": "bash"}, "not both"),
    ({"code": 'print("x")'}, "language parameter is required"),
    ({"language": "ruby", "code": "x"}, "language must be one of"),
    ({"language": "bash", "code": ""}, "the script is empty"),
    ({"argv": []}, "between 1 and 256"),
    ({"argv": ["x"] * 257}, "between 1 and 256"),
    ({"argv": [""]}, "argv[0] must name a program"),
    ({"argv": ["ls", 3]}, "argv[1] must be a string"),
    ({"argv": "ls -l"}, "argv must be a list"),
    ({"argv": ["ls", "a\u0000b"]}, "NUL"),
    ({"argv": ["ls"], "language": "bash"}, "language goes with code"),
    ({"argv": ["ls"], "timeout": 301}, "at most 300 seconds"),
    ({"argv": ["ls"], "timeout": 0}, "timeout must be more than 0"),
    ({"argv": ["ls"], "stdin": 5}, "stdin must be a string"),
    ({"argv": ["ls"], "workdir": "/"}, "unknown field(s): workdir"),
    ({"argv": ["ls"], "cwd": ""}, "cwd is empty"),
    ({"argv": ["ls"], "cwd": "a\u0000b"}, "cwd must not contain a NUL"),
    ({"argv": ["ls"], "env": {"1X": "y"}}, "env name '1X'"),
    ({"argv": ["ls"], "env": {"X": 1}}, "env['X'] must be a string"),
    ({"argv": ["ls"], "env": ["X=1"]}, "env must be an object"),
    (["ls"], "must be a JSON object"),
]


@pytest.mark.parametrize(("body", "message_mentions"), BAD_JSON_EXECS)
def test_a_bad_json_exec_is_a_400(
    client: TestClient, sandbox_id: str, body: Any, message_mentions: str
) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/exec", json=body)

    assert response.status_code == 400
    assert message_mentions in response.json()["error"]["message"]


@pytest.mark.parametrize(("query", "body", "message_mentions"), [
    ("", b"echo x", "language parameter is required"),
    ("language=bash", b"", "the script is empty"),
    ("language=bash&timeout=301", b"echo x", "at most 300 seconds"),
    ("language=bash&timeout=soon", b"echo x", "timeout must be a number"),
    ("language=bash&argv=ls", b"echo x", "unknown query parameter(s): argv"),
    ("language=bash&stream=yes", b"echo x", "stream must be true or false"),
])
def test_a_bad_raw_exec_is_a_400(
    client: TestClient, sandbox_id: str, query: str, body: bytes, message_mentions: str
) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/exec?{query}", content=body,
                           headers={"Content-Type": "text/plain"})

    assert response.status_code == 400
    assert message_mentions in response.json()["error"]["message"]


def test_a_json_exec_takes_its_options_from_the_body_not_the_query(
    client: TestClient, sandbox_id: str
) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/exec?language=bash",
                           json={"language": "bash", "code": "echo x\n"})

    assert response.status_code == 400
    assert "unknown query parameter(s): language" in response.json()["error"]["message"]


def test_exec_in_an_unknown_sandbox_is_a_404_even_when_streaming(client: TestClient) -> None:
    for query in ("", "?stream=true"):
        response = client.post(f"/sandboxes/{'b' * 24}/exec{query}",
                               json={"language": "bash", "code": "echo x\n"})

        assert response.status_code == 404


def test_exec_in_an_exited_script_is_a_409(client: TestClient) -> None:
    sandbox_id = client.post("/execute?language=bash&detach=true",
                             content=b"exit 0\n").json()["sandbox_id"]
    wait_for_state(client, sandbox_id, "exited")

    response = client.post(f"/sandboxes/{sandbox_id}/exec?stream=true",
                           json={"language": "bash", "code": "echo x\n"})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_state"


def test_an_exec_body_over_the_limit_is_a_413(start_service: StartService) -> None:
    client = start_service(max_body_bytes=64).client
    sandbox_id = create_session(client)

    response = client.post(f"/sandboxes/{sandbox_id}/exec?language=bash", content=b"#" * 65)

    assert response.status_code == 413


def test_exec_is_a_post(client: TestClient, sandbox_id: str) -> None:
    response = client.get(f"/sandboxes/{sandbox_id}/exec")

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"

