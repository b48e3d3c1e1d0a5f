from __future__ import annotations

from starlette.testclient import TestClient

from e2e.support import StartService, ndjson, wait_for_state
from sandbox.domain.ids import ID_PATTERN

SCRIPT = b'import sys\nprint("hello")\nprint("oops", file=sys.stderr)\nsys.exit(3)\n'


def test_detach_answers_202_with_the_record_at_once(client: TestClient) -> None:
    response = client.post("/execute?language=python&detach=true",
                           content=b"import time\ntime.sleep(5)\n")

    assert response.status_code == 202
    record = response.json()
    assert ID_PATTERN.match(record["sandbox_id"])
    assert response.headers["Location"] == f"/sandboxes/{record['sandbox_id']}"
    assert (record["kind"], record["state"], record["language"]) == ("script", "running",
                                                                       "python")


def test_a_detached_script_runs_on_and_its_output_is_kept(client: TestClient) -> None:
    sandbox_id = client.post("/execute?language=python&detach=true", content=SCRIPT).json()[
        "sandbox_id"]

    record = wait_for_state(client, sandbox_id, "exited")
    output = client.get(f"/sandboxes/{sandbox_id}/output")

    assert (record["exit_code"], record["reason"]) == (3, "exited with code 3")
    assert output.status_code == 200
    assert output.json() == {
        "sandbox_id": sandbox_id, "state": "exited", "exit_code": 3,
        "stdout": "hello\n", "stderr": "oops\n",
        "stdout_truncated": False, "stderr_truncated": False,
    }


def test_the_output_so_far_of_a_running_script(client: TestClient) -> None:
    sandbox_id = client.post("/execute?language=bash&detach=true",
                             content=b"echo early\nsleep 5\n").json()["sandbox_id"]

    output = client.get(f"/sandboxes/{sandbox_id}/output").json()

    assert output["state"] == "running"
    assert output["exit_code"] is None


def test_a_detached_script_over_its_timeout_exits_timed_out(client: TestClient) -> None:
    sandbox_id = client.post("/execute?language=bash&detach=true&timeout=0.2",
                             content=b"sleep 5\n").json()["sandbox_id"]

    record = wait_for_state(client, sandbox_id, "exited")

    assert record["exit_code"] is None
    assert "timed out" in record["reason"]


def test_detached_output_over_the_limit_is_truncated(start_service: StartService) -> None:
    client = start_service(output_limit_bytes=10).client
    sandbox_id = client.post("/execute?language=python&detach=true",
                             content=b'print("a" * 100)\n').json()["sandbox_id"]

    wait_for_state(client, sandbox_id, "exited")
    output = client.get(f"/sandboxes/{sandbox_id}/output").json()

    assert output["stdout"] == "a" * 10
    assert output["stdout_truncated"] is True


def test_follow_streams_the_output_and_ends_with_an_exit_event(client: TestClient) -> None:
    script = b'import time\nprint("one")\ntime.sleep(0.3)\nprint("two")\n'
    sandbox_id = client.post("/execute?language=python&detach=true",
                             content=script).json()["sandbox_id"]

    response = client.get(f"/sandboxes/{sandbox_id}/output?follow=true")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    events = ndjson(response.text)
    assert events[0] == {"type": "start", "sandbox_id": sandbox_id}
    assert "".join(event["data"] for event in events if event["type"] == "stdout") == (
        "one\ntwo\n")
    assert events[-1]["type"] == "exit"
    assert (events[-1]["state"], events[-1]["exit_code"]) == ("exited", 0)


def test_follow_of_a_finished_script_replays_it(client: TestClient) -> None:
    sandbox_id = client.post("/execute?language=python&detach=true",
                             content=SCRIPT).json()["sandbox_id"]
    wait_for_state(client, sandbox_id, "exited")

    events = ndjson(client.get(f"/sandboxes/{sandbox_id}/output?follow=true").text)

    assert [event["type"] for event in events] == ["start", "stdout", "stderr", "exit"]


def test_output_of_an_unknown_sandbox_is_a_404(client: TestClient) -> None:
    for query in ("", "?follow=true"):
        response = client.get(f"/sandboxes/{'0' * 24}/output{query}")

        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_output_refuses_bad_query_parameters(client: TestClient) -> None:
    sandbox_id = client.post("/execute?language=python&detach=true",
                             content=SCRIPT).json()["sandbox_id"]

    for query in ("follow=maybe", "tail=10"):
        response = client.get(f"/sandboxes/{sandbox_id}/output?{query}")

        assert response.status_code == 400


def test_detach_counts_against_the_running_limit(start_service: StartService) -> None:
    client = start_service(max_running_sandboxes=1).client
    client.post("/execute?language=bash&detach=true", content=b"sleep 5\n")

    response = client.post("/execute?language=bash&detach=true", content=b"sleep 5\n")

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "at_capacity"
    assert response.headers["Retry-After"] == "5"


def test_a_detached_script_without_a_timeout_may_run_as_long_as_the_server_allows(
    start_service: StartService,
) -> None:
    client = start_service(default_timeout_s=5, max_timeout_s=120).client

    detached = client.post("/execute?language=python&detach=true", content=b'print("hi")')
    limited = client.post("/execute?language=python&detach=true&timeout=7",
                          content=b'print("hi")')

    assert detached.json()["limits"]["timeout_s"] == 120
    assert limited.json()["limits"]["timeout_s"] == 7
