"""Code contexts over HTTP, on the fake runtime (its cells: sandbox/adapters/fake_contexts.py).
What real cells make (figures, DataFrames) is checked on gVisor: tests/integration."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from e2e.support import StartService, create_session, ndjson
from sandbox.domain.ids import CONTEXT_ID_PATTERN


@pytest.fixture
def sandbox_id(client: TestClient) -> str:
    return create_session(client)


def new_context(client: TestClient, sandbox_id: str) -> str:
    response = client.post(f"/sandboxes/{sandbox_id}/contexts", json={"language": "python"})
    assert response.status_code == 201, response.text
    context_id: str = response.json()["context_id"]
    return context_id


def run(client: TestClient, sandbox_id: str, context_id: str, code: str,
        **fields: Any) -> Any:
    return client.post(f"/sandboxes/{sandbox_id}/contexts/{context_id}/run",
                       json={"code": code, **fields})


def test_a_context_is_made_with_201_its_record_and_where_it_lives(
    client: TestClient, sandbox_id: str
) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/contexts", json={"language": "python"})

    record = response.json()
    assert response.status_code == 201
    assert CONTEXT_ID_PATTERN.match(record["context_id"])
    assert record["language"] == "python" and record["created_at"].endswith("+00:00")
    assert response.headers["Location"] == (
        f"/sandboxes/{sandbox_id}/contexts/{record['context_id']}")


def test_a_context_without_a_body_is_a_python_one(client: TestClient, sandbox_id: str) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/contexts")

    assert (response.status_code, response.json()["language"]) == (201, "python")


@pytest.mark.parametrize(("body", "says"), [
    ({"language": "bash"}, "contexts run python"),
    ({"language": "ruby"}, "language must be one of"),
    ({"lang": "python"}, "unknown field(s): lang"),
    ([], "must be a JSON object"),
])
def test_a_bad_context_body_is_a_400(
    client: TestClient, sandbox_id: str, body: Any, says: str
) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/contexts", json=body)

    assert response.status_code == 400
    assert says in response.json()["error"]["message"]


def test_the_contexts_are_listed_and_one_deleted_is_gone(
    client: TestClient, sandbox_id: str
) -> None:
    first, second = new_context(client, sandbox_id), new_context(client, sandbox_id)

    deleted = client.delete(f"/sandboxes/{sandbox_id}/contexts/{first}")
    listed = client.get(f"/sandboxes/{sandbox_id}/contexts").json()

    assert deleted.json() == {"context_id": first, "deleted": True}
    assert [context["context_id"] for context in listed["contexts"]] == [second]
    assert run(client, sandbox_id, first, "1").status_code == 404


def test_a_cell_answers_with_its_count_results_output_and_error(
    client: TestClient, sandbox_id: str
) -> None:
    context_id = new_context(client, sandbox_id)
    run(client, sandbox_id, context_id, "x = 41")

    answer = run(client, sandbox_id, context_id, 'print("hi")\nx + 1').json()

    assert answer["execution_count"] == 2
    assert answer["results"] == [{"text/plain": "42", "is_main_result": True,
                                  "truncated": False}]
    assert (answer["stdout"], answer["stderr"], answer["error"]) == ("hi\n", "", None)
    assert answer["context_id"] == context_id
    assert {"timed_out", "restarted", "stdout_truncated", "stderr_truncated",
            "results_truncated", "duration_ms"} <= answer.keys()


def test_a_cells_exception_is_its_error(client: TestClient, sandbox_id: str) -> None:
    context_id = new_context(client, sandbox_id)

    answer = run(client, sandbox_id, context_id, 'raise ValueError("bad input")').json()

    assert answer["error"]["name"] == "ValueError"
    assert answer["error"]["value"] == "bad input"
    assert "ValueError: bad input" in answer["error"]["traceback"]


def test_a_streamed_cell_gives_ndjson_events_in_order(
    client: TestClient, sandbox_id: str
) -> None:
    context_id = new_context(client, sandbox_id)

    response = client.post(f"/sandboxes/{sandbox_id}/contexts/{context_id}/run?stream=true",
                           json={"code": 'print("one")\nprint("two", file=sys.stderr)\n'
                                         'HTML("<b>x</b>")'})

    events = ndjson(response.text)
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert [event["type"] for event in events] == ["start", "stdout", "stderr", "result",
                                                   "end"]
    assert events[0] == {"type": "start", "sandbox_id": sandbox_id, "context_id": context_id}
    assert events[3] == {"type": "result", "text/plain": "<IPython.core.display.HTML object>",
                         "text/html": "<b>x</b>", "is_main_result": True, "truncated": False}
    assert events[-1]["execution_count"] == 1


def test_a_streamed_cells_error_comes_before_its_end(client: TestClient, sandbox_id: str) -> None:
    context_id = new_context(client, sandbox_id)

    response = client.post(f"/sandboxes/{sandbox_id}/contexts/{context_id}/run?stream=true",
                           json={"code": 'raise KeyError("k")'})

    events = ndjson(response.text)
    assert [event["type"] for event in events] == ["start", "error", "end"]
    assert (events[1]["name"], events[1]["value"]) == ("KeyError", "k")


def test_a_streamed_cell_refused_before_it_starts_is_a_plain_error(
    client: TestClient, sandbox_id: str
) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/contexts/{'0' * 16}/run?stream=true",
                           json={"code": "1"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "context_not_found"


@pytest.mark.parametrize(("body", "says"), [
    ({}, "code is required"),
    ({"code": 1}, "code must be a string"),
    ({"code": "1", "timeout": 301}, "at most 300 seconds"),
    ({"code": "1", "timeout": "5"}, "timeout must be a number"),
    ({"code": "1", "language": "python"}, "unknown field(s): language"),
])
def test_a_bad_cell_body_is_a_400(client: TestClient, sandbox_id: str, body: Any,
                                  says: str) -> None:
    context_id = new_context(client, sandbox_id)

    response = client.post(f"/sandboxes/{sandbox_id}/contexts/{context_id}/run", json=body)

    assert response.status_code == 400
    assert says in response.json()["error"]["message"]


@pytest.mark.parametrize("context_id", ["0" * 16, "short", "0" * 17, "G" * 16])
def test_an_unknown_context_is_a_404_on_every_call(
    client: TestClient, sandbox_id: str, context_id: str
) -> None:
    base = f"/sandboxes/{sandbox_id}/contexts/{context_id}"

    for response in (client.post(f"{base}/run", json={"code": "1"}),
                     client.post(f"{base}/interrupt"), client.post(f"{base}/restart"),
                     client.delete(base)):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "context_not_found"


def test_context_calls_on_a_suspended_sandbox_are_409s(
    client: TestClient, sandbox_id: str
) -> None:
    context_id = new_context(client, sandbox_id)
    client.post(f"/sandboxes/{sandbox_id}/suspend")

    answers = [client.get(f"/sandboxes/{sandbox_id}/contexts"),
               client.post(f"/sandboxes/{sandbox_id}/contexts"),
               run(client, sandbox_id, context_id, "1")]

    assert [answer.status_code for answer in answers] == [409, 409, 409]


def test_variables_survive_a_suspend_and_restore(client: TestClient, sandbox_id: str) -> None:
    context_id = new_context(client, sandbox_id)
    run(client, sandbox_id, context_id, "kept = 12")

    client.post(f"/sandboxes/{sandbox_id}/suspend")
    client.post(f"/sandboxes/{sandbox_id}/restore")

    assert run(client, sandbox_id, context_id, "kept + 1").json()["results"][0][
        "text/plain"] == "13"


def in_background(client: TestClient, url: str, body: dict[str, Any]) -> tuple[
        threading.Thread, list[Any]]:
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(client.post(url, json=body)))
    thread.start()
    return thread, answers


def test_interrupt_stops_a_running_cell_and_the_variables_stay(
    client: TestClient, sandbox_id: str
) -> None:
    context_id = new_context(client, sandbox_id)
    base = f"/sandboxes/{sandbox_id}/contexts/{context_id}"
    run(client, sandbox_id, context_id, "x = 3")
    thread, answers = in_background(client, f"{base}/run", {"code": "while True: pass"})
    busy = run(client, sandbox_id, context_id, "x")
    while busy.status_code == 200:  # the loop may not have started yet
        time.sleep(0.02)
        busy = run(client, sandbox_id, context_id, "x")

    interrupted = client.post(f"{base}/interrupt")
    thread.join(10)

    assert (busy.status_code, busy.json()["error"]["code"]) == (409, "invalid_state")
    assert interrupted.json() == {"context_id": context_id, "interrupted": True}
    assert answers[0].json()["error"]["name"] == "KeyboardInterrupt"
    assert run(client, sandbox_id, context_id, "x").json()["results"][0]["text/plain"] == "3"


def test_restart_starts_the_context_afresh(client: TestClient, sandbox_id: str) -> None:
    context_id = new_context(client, sandbox_id)
    run(client, sandbox_id, context_id, "x = 3")

    restarted = client.post(f"/sandboxes/{sandbox_id}/contexts/{context_id}/restart")

    assert restarted.json() == {"context_id": context_id, "restarted": True}
    assert run(client, sandbox_id, context_id, "x").json()["error"]["name"] == "NameError"


def test_a_timed_out_cell_says_so_and_the_context_answers_after(
    client: TestClient, sandbox_id: str
) -> None:
    context_id = new_context(client, sandbox_id)

    timed_out = run(client, sandbox_id, context_id, "while True: pass", timeout=0.2).json()
    after = run(client, sandbox_id, context_id, "1").json()

    assert (timed_out["timed_out"], timed_out["error"]["name"]) == (True, "TimeoutError")
    assert after["results"][0]["text/plain"] == "1"


def test_a_sandbox_takes_no_more_contexts_than_allowed(start_service: StartService) -> None:
    client = start_service(max_contexts=1).client
    sandbox_id = create_session(client)
    new_context(client, sandbox_id)

    refused = client.post(f"/sandboxes/{sandbox_id}/contexts")

    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "invalid_state")


def test_results_past_the_cap_are_cut_and_flagged(start_service: StartService) -> None:
    client = start_service(cell_result_bytes=10).client
    sandbox_id = create_session(client)
    context_id = new_context(client, sandbox_id)

    answer = run(client, sandbox_id, context_id, 'HTML("<b>long enough</b>")').json()

    assert answer["results"] == [{"text/plain": "<IPython.c", "is_main_result": True,
                                  "truncated": True}]
