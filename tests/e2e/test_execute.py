from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient
from structlog.typing import EventDict

from e2e.support import StartService
from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.domain.errors import AtCapacity, RuntimeFailure
from sandbox.domain.ids import ID_PATTERN
from sandbox.domain.model import Outcome, Program, SandboxSpec
from sandbox.domain.ports import OutputSink

HELLO = b'print("hello")\n'


def test_execute_returns_the_scripts_output(client: TestClient) -> None:
    response = client.post(
        "/execute?language=python", content=HELLO, headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 200
    result = response.json()
    assert ID_PATTERN.match(result.pop("sandbox_id"))
    assert isinstance(result.pop("duration_ms"), int)
    assert result == {
        "language": "python",
        "exit_code": 0,
        "timed_out": False,
        "oom_killed": False,
        "stdout": "hello\n",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
    }


def test_execute_runs_bash(client: TestClient) -> None:
    response = client.post("/execute?language=bash", content=b'echo hi\necho "oops" >&2\n')

    assert response.status_code == 200
    assert response.json()["stdout"] == "hi\n"
    assert response.json()["stderr"] == "oops\n"


def test_a_failing_script_is_still_a_200_with_its_exit_code(client: TestClient) -> None:
    response = client.post(
        "/execute?language=python", content=b'import sys\nprint("bye")\nsys.exit(3)\n'
    )

    assert response.status_code == 200
    assert response.json()["exit_code"] == 3
    assert response.json()["stdout"] == "bye\n"


def test_a_script_over_its_timeout_is_reported_as_timed_out(client: TestClient) -> None:
    response = client.post(
        "/execute?language=python&timeout=0.2", content=b"import time\ntime.sleep(5)\n"
    )

    assert response.status_code == 200
    assert response.json()["timed_out"] is True
    assert response.json()["exit_code"] is None


def test_output_over_the_limit_is_truncated_and_flagged(start_service: StartService) -> None:
    client = start_service(output_limit_bytes=10).client

    response = client.post("/execute?language=python", content=b'print("a" * 100)\n')

    assert response.status_code == 200
    assert response.json()["stdout"] == "a" * 10
    assert response.json()["stdout_truncated"] is True
    assert response.json()["stderr_truncated"] is False


def test_timeout_and_memory_reach_the_runtime(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    client.post("/execute?language=python&timeout=2.5&memory_mb=256", content=HELLO)

    [(spec, program)] = runtime.runs
    assert (spec.limits.timeout_s, spec.limits.memory_mb) == (2.5, 256)
    assert program.source == HELLO


def test_without_options_the_default_limits_apply(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    client.post("/execute?language=python", content=HELLO)

    [(spec, _)] = runtime.runs
    assert (spec.limits.timeout_s, spec.limits.memory_mb) == (30.0, 512)


@pytest.mark.parametrize(
    ("query", "message_mentions"),
    [
        ("", "language parameter is required"),
        ("language=ruby", "python, bash"),
        ("language=", "python, bash"),
        ("language=python&timeout=0", "timeout"),
        ("language=python&timeout=-1", "timeout"),
        ("language=python&timeout=nan", "timeout"),
        ("language=python&timeout=inf", "timeout"),
        ("language=python&timeout=301", "at most 300 seconds"),
        ("language=python&timeout=soon", "timeout must be a number"),
        ("language=python&memory_mb=8", "memory_mb"),
        ("language=python&memory_mb=5000", "memory_mb"),
        ("language=python&memory_mb=1.5", "whole number"),
        ("language=python&memory_mb=lots", "whole number"),
        ("language=python&stream=yes", "stream must be true or false"),
        ("language=python&packages=--index-url=x", "pip options are not allowed"),
        ("language=python&detach=later", "detach must be true or false"),
        ("language=python&detach=true&stream=true", "do not go together"),
        ("language=python&language=bash", "more than once: language"),
    ],
)
def test_bad_query_parameters_are_a_400_that_says_what_is_wrong(
    client: TestClient, runtime: FakeSandboxRuntime, query: str, message_mentions: str
) -> None:
    response = client.post(f"/execute?{query}", content=HELLO)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert message_mentions in error["message"]
    assert runtime.runs == []


def test_an_empty_body_is_a_400(client: TestClient) -> None:
    response = client.post("/execute?language=python", content=b"")

    assert response.status_code == 400
    assert "body is empty" in response.json()["error"]["message"]


def test_a_body_over_the_limit_is_refused_by_its_content_length(
    start_service: StartService,
) -> None:
    service = start_service(max_body_bytes=64)

    response = service.client.post("/execute?language=python", content=b"#" * 65)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert response.headers["Connection"] == "close"
    assert service.runtime.runs == []


def test_a_chunked_body_over_the_limit_is_refused(start_service: StartService) -> None:
    service = start_service(max_body_bytes=64)

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"#" * 10

    response = service.client.post("/execute?language=python", content=chunks())

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert service.runtime.runs == []


def test_a_body_exactly_at_the_limit_is_accepted(start_service: StartService) -> None:
    client = start_service(max_body_bytes=len(HELLO)).client

    response = client.post("/execute?language=python", content=HELLO)

    assert response.status_code == 200


def test_a_runtime_failure_is_a_503_that_keeps_the_details_in_the_log(
    client: TestClient,
    runtime: FakeSandboxRuntime,
    monkeypatch: pytest.MonkeyPatch,
    logs: list[EventDict],
) -> None:
    async def broken(spec: SandboxSpec, program: Program, sink: OutputSink) -> Outcome:
        raise RuntimeFailure("runsc create failed: /var/lib/secret/bundle")

    monkeypatch.setattr(runtime, "run", broken)

    response = client.post("/execute?language=python", content=HELLO)

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "runtime_failure"
    assert "runtime failed, not the script" in error["message"]
    assert "/var/lib/secret" not in response.text
    failure = next(entry for entry in logs if entry["event"] == "runtime.failed")
    assert "/var/lib/secret" in failure["detail"]


def test_at_capacity_is_a_429_with_retry_after(
    client: TestClient, runtime: FakeSandboxRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def full(spec: SandboxSpec, program: Program, sink: OutputSink) -> Outcome:
        raise AtCapacity("too many sandboxes are running", retry_after_s=3)

    monkeypatch.setattr(runtime, "run", full)

    response = client.post("/execute?language=python", content=HELLO)

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "at_capacity"
    assert response.headers["Retry-After"] == "3"


def test_an_unexpected_exception_is_a_500_without_its_traceback(
    client: TestClient,
    runtime: FakeSandboxRuntime,
    monkeypatch: pytest.MonkeyPatch,
    logs: list[EventDict],
) -> None:
    async def buggy(spec: SandboxSpec, program: Program, sink: OutputSink) -> Outcome:
        raise ZeroDivisionError("secret detail")

    monkeypatch.setattr(runtime, "run", buggy)

    response = client.post(
        "/execute?language=python", content=HELLO, headers={"X-Request-ID": "r1"}
    )

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal"
    assert "secret detail" not in response.text
    assert "Traceback" not in response.text
    assert response.headers["X-Request-ID"] == "r1"
    logged = next(entry for entry in logs if entry["event"] == "http.unexpected_error")
    assert logged["exc_info"] is True
    assert logged["request_id"] == "r1"


def test_stream_sends_ndjson_events_as_output_arrives(client: TestClient) -> None:
    script = b'import sys\nprint("one")\nprint("two", file=sys.stderr)\nprint("three")\n'

    response = client.post("/execute?language=python&stream=true", content=script)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert response.text.endswith("\n")
    events = [json.loads(line) for line in response.text.splitlines()]
    assert [event["type"] for event in events] == ["start", "stdout", "stderr", "stdout", "exit"]
    assert "".join(event["data"] for event in events if event["type"] == "stdout") == "one\nthree\n"
    start, *_, end = events
    assert start == {"type": "start", "sandbox_id": end["sandbox_id"]}
    assert end["exit_code"] == 0
    assert "stdout" not in end
    assert end["stdout_truncated"] is False


def test_stream_false_answers_with_one_result(client: TestClient) -> None:
    response = client.post("/execute?language=python&stream=false", content=HELLO)

    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["stdout"] == "hello\n"


def test_a_runtime_failure_mid_stream_ends_it_with_an_error_event(
    client: TestClient, runtime: FakeSandboxRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(spec: SandboxSpec, program: Program, sink: OutputSink) -> Outcome:
        raise RuntimeFailure("runsc died")

    monkeypatch.setattr(runtime, "run", broken)

    response = client.post("/execute?language=python&stream=true", content=HELLO)

    events = [json.loads(line) for line in response.text.splitlines()]
    assert [event["type"] for event in events] == ["start", "error"]
    assert events[-1]["error"]["code"] == "runtime_failure"
    assert "runsc died" not in response.text


def test_the_request_id_given_is_echoed(client: TestClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123.DEF_4"})

    assert response.headers["X-Request-ID"] == "abc-123.DEF_4"


@pytest.mark.parametrize("given", [None, "has spaces", "x" * 65, "semi;colon"])
def test_a_missing_or_odd_request_id_is_replaced_by_a_new_one(
    client: TestClient, given: str | None
) -> None:
    headers = {} if given is None else {"X-Request-ID": given}

    first = client.get("/healthz", headers=headers).headers["X-Request-ID"]
    second = client.get("/healthz", headers=headers).headers["X-Request-ID"]

    assert len(first) == 32
    assert first != second


def test_log_lines_carry_the_request_and_sandbox_ids(
    client: TestClient, logs: list[EventDict]
) -> None:
    response = client.post(
        "/execute?language=python", content=HELLO, headers={"X-Request-ID": "req-42"}
    )

    sandbox_id = response.json()["sandbox_id"]
    by_event = {entry["event"]: entry for entry in logs}
    for event in ("execution.started", "execution.finished", "http.request"):
        assert by_event[event]["request_id"] == "req-42"
        assert by_event[event]["sandbox_id"] == sandbox_id
    assert by_event["http.request"]["method"] == "POST"
    assert by_event["http.request"]["path"] == "/execute"
    assert by_event["http.request"]["status"] == 200
    assert isinstance(by_event["http.request"]["duration_ms"], int)
