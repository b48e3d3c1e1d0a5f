"""Code contexts, templates and forks in the SDK, against the API as issue 11 specifies it
(the server's side is built apart): `POST /sandboxes/{id}/contexts`, `.../contexts/{cid}/run`
answering `{"execution_count", "results", "stdout", "stderr", "error"}` with Jupyter MIME
bundles, `stream=true` events, interrupt, restart, delete; `snapshot`, `/templates`, `fork`."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from client_support import SANDBOX_ID, FakeApi, error, ndjson, record, result

from sandbox_client import (
    Execution,
    ExecutionError,
    NotFound,
    Result,
    Sandbox,
    Template,
    run,
)

BASE = f"/sandboxes/{SANDBOX_ID}"
CONTEXTS = f"{BASE}/contexts"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))


def cell(**fields: Any) -> dict[str, Any]:
    return {"execution_count": 1, "results": [], "stdout": "", "stderr": "", "error": None,
            **fields}


@pytest.fixture
def api() -> FakeApi:
    return (FakeApi()
            .on("GET", BASE, json=record())
            .on("POST", CONTEXTS, status_code=201, json={"context_id": "c1",
                                                          "language": "python"}))


@pytest.fixture
def sandbox(api: FakeApi) -> Sandbox:
    return Sandbox.connect(SANDBOX_ID, config=api.config())


def test_run_code_makes_a_default_context_once_and_runs_cells_in_it(
    api: FakeApi, sandbox: Sandbox
) -> None:
    api.on("POST", f"{CONTEXTS}/c1/run", json=cell(
        results=[{"text/plain": "3", "is_main_result": True}]))

    first = sandbox.run_code("x = 1\nx + 2")
    sandbox.run_code("x", timeout=5)

    creations = [request for request in api.requests if request.url.path == CONTEXTS]
    assert len(creations) == 1
    assert api.sent_json(1) == {"language": "python"}
    assert api.sent_json(2) == {"code": "x = 1\nx + 2"}
    assert api.sent_json(3) == {"code": "x", "timeout": 5}
    assert (first.text, first.execution_count, first.error) == ("3", 1, None)


def test_results_are_mime_bundles_with_a_decodable_png(api: FakeApi, sandbox: Sandbox) -> None:
    figure = {"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"}
    frame = {"text/html": "<table></table>", "text/plain": "   a\n0  1", "is_main_result": True}
    api.on("POST", f"{CONTEXTS}/c1/run", json=cell(results=[figure, frame], stdout="hi\n"))

    execution = sandbox.run_code("df.plot(); df")

    [plot, table] = execution.results
    assert plot.png_bytes() == PNG
    assert plot.formats() == ["image/png", "text/plain"]
    assert (table.html, execution.text) == ("<table></table>", "   a\n0  1")
    assert execution.logs.stdout == ["hi\n"]


def test_a_bundle_in_jupyters_message_form_is_read_too() -> None:
    result = Result.from_dict({"data": {"text/markdown": "# hi", "text/plain": "hi"},
                               "metadata": {"isolated": True}, "truncated": True})

    assert (result.markdown, result.text, result.truncated) == ("# hi", "hi", True)
    assert result.metadata == {"isolated": True}


def test_an_exception_in_the_cell_is_its_error_not_the_callers(
    api: FakeApi, sandbox: Sandbox
) -> None:
    api.on("POST", f"{CONTEXTS}/c1/run", json=cell(error={
        "name": "ZeroDivisionError", "value": "division by zero",
        "traceback": ["Traceback...", "ZeroDivisionError: division by zero"]}))

    execution = sandbox.run_code("1/0")

    assert execution.error == ExecutionError(
        name="ZeroDivisionError", value="division by zero",
        traceback="Traceback...\nZeroDivisionError: division by zero")
    assert execution.text is None


def test_a_streamed_cell_calls_back_as_events_arrive(api: FakeApi, sandbox: Sandbox) -> None:
    api.on("POST", f"{CONTEXTS}/c1/run", content=ndjson(
        {"type": "stdout", "data": "step 1\n"},
        {"type": "result", "data": {"text/plain": "42"}, "is_main_result": True},
        {"type": "error", "name": "ValueError", "value": "late", "traceback": "tb"},
        {"type": "end", "execution_count": 7}))
    seen: list[object] = []

    execution = sandbox.run_code("...", on_stdout=seen.append, on_result=seen.append,
                                 on_error=seen.append)

    assert api.last().url.params["stream"] == "true"
    assert seen == [
        "step 1\n", Result(data={"text/plain": "42"}, is_main_result=True),
        ExecutionError(name="ValueError", value="late", traceback="tb"),
    ]
    assert (execution.execution_count, execution.text) == (7, "42")


def test_contexts_are_listed_interrupted_restarted_and_deleted(
    api: FakeApi, sandbox: Sandbox
) -> None:
    api.on("GET", CONTEXTS, json={"contexts": [{"context_id": "c1", "language": "python"},
                                               {"context_id": "c2", "language": "bash"}]})
    for action in ("interrupt", "restart"):
        api.on("POST", f"{CONTEXTS}/c2/{action}", json={"context_id": "c2"})
    api.on("DELETE", f"{CONTEXTS}/c2", json={"context_id": "c2", "deleted": True})

    contexts = sandbox.list_contexts()
    contexts[1].interrupt()
    contexts[1].restart()
    contexts[1].delete()

    assert [(context.context_id, context.language) for context in contexts] == [
        ("c1", "python"), ("c2", "bash")]
    assert [(request.method, request.url.path) for request in api.requests[-3:]] == [
        ("POST", f"{CONTEXTS}/c2/interrupt"), ("POST", f"{CONTEXTS}/c2/restart"),
        ("DELETE", f"{CONTEXTS}/c2")]


def test_a_deleted_default_context_is_made_again_on_next_use(
    api: FakeApi, sandbox: Sandbox
) -> None:
    api.on("DELETE", f"{CONTEXTS}/c1", json={"deleted": True})
    api.on("POST", f"{CONTEXTS}/c1/run", json=cell())

    sandbox.default_context().delete()
    sandbox.run_code("1")

    assert [request.url.path for request in api.requests].count(CONTEXTS) == 2


def test_a_context_that_is_gone_is_not_found(api: FakeApi, sandbox: Sandbox) -> None:
    api.on("POST", f"{CONTEXTS}/zz/run", error(404, "not_found", "no context zz"))

    with pytest.raises(NotFound, match="no context zz"):
        sandbox.run_code("1", context="zz")


def test_snapshot_answers_a_template_to_start_sandboxes_and_scripts_from(
    api: FakeApi, sandbox: Sandbox
) -> None:
    api.on("POST", f"{BASE}/snapshot", status_code=201,
           json={"template_id": "t1", "created_at": "2026-01-02T03:04:05+00:00",
                 "sandbox_id": SANDBOX_ID})
    api.on("POST", "/sandboxes", status_code=201, json=record())
    api.on("POST", "/execute", json=result())

    template = sandbox.snapshot()
    Sandbox.create(template=template.template_id, config=api.config())
    run("print(x)", template=template.template_id, config=api.config())

    assert template.template_id == "t1" and template.raw["sandbox_id"] == SANDBOX_ID
    assert api.sent_json(-2) == {"language": "python", "template": "t1"}
    assert api.last().url.params["template"] == "t1"


def test_templates_are_listed_and_deleted(api: FakeApi) -> None:
    api.on("GET", "/templates", json={"templates": [{"template_id": "t1"}]})
    api.on("DELETE", "/templates/t1", json={"template_id": "t1", "deleted": True})

    listed = Sandbox.list_templates(config=api.config())
    Sandbox.delete_template("t1", config=api.config())

    assert listed == [Template(template_id="t1")]
    assert (api.last().method, api.last().url.path) == ("DELETE", "/templates/t1")


def test_fork_answers_sandboxes_that_go_on_from_this_one(api: FakeApi, sandbox: Sandbox) -> None:
    ids = ["b" * 24, "c" * 24]
    api.on("POST", f"{BASE}/fork", status_code=201,
           json={"sandboxes": [record(sandbox_id=sandbox_id) for sandbox_id in ids]})

    forks = sandbox.fork(2)

    assert api.sent_json() == {"count": 2}
    assert [fork.sandbox_id for fork in forks] == ids
    assert all(fork.config == sandbox.config for fork in forks)


def test_a_cell_in_the_plain_answer_reads_the_logs_as_lists() -> None:
    execution = Execution.from_dict(cell(stdout="a\n", stderr=""))

    assert (execution.logs.stdout, execution.logs.stderr) == (["a\n"], [])
