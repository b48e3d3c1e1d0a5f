"""Streamed answers: NDJSON lines parsed by the json module, output handed to callbacks as it
arrives, the result put together from the events."""

from __future__ import annotations

import httpx
import pytest
from client_support import SANDBOX_ID, FakeApi, ndjson, record

from sandbox_client import (
    CommandResult,
    ProtocolError,
    RuntimeFailure,
    Sandbox,
    run,
)
from sandbox_client._events import CommandEvents, events

EXIT = {"type": "exit", "sandbox_id": SANDBOX_ID, "language": "python", "exit_code": 3,
        "timed_out": False, "oom_killed": False, "stdout_truncated": False,
        "stderr_truncated": True, "duration_ms": 40}


def test_run_streams_output_to_the_callbacks_and_returns_the_result() -> None:
    body = ndjson({"type": "start", "sandbox_id": SANDBOX_ID},
                  {"type": "stdout", "data": "one\n"}, {"type": "stderr", "data": "oops\n"},
                  {"type": "stdout", "data": "two\n"}, EXIT)
    api = FakeApi().on("POST", "/execute", content=body)
    out: list[str] = []
    err: list[str] = []

    done = run("...", on_stdout=out.append, on_stderr=err.append, config=api.config())

    assert api.last().url.params["stream"] == "true"
    assert (out, err) == (["one\n", "two\n"], ["oops\n"])
    assert done == CommandResult(exit_code=3, stdout="one\ntwo\n", stderr="oops\n",
                                 sandbox_id=SANDBOX_ID, language="python",
                                 stderr_truncated=True, duration_ms=40)


def test_a_line_separator_inside_the_output_does_not_split_its_event() -> None:
    # JSON may carry U+2028 and U+0085 unescaped; str.splitlines (and httpx's iter_lines)
    # would cut the line there.
    text = "a\u2028b\x85c\r\n"
    body = ndjson({"type": "stdout", "data": text}, EXIT)
    response = httpx.Response(200, content=body)

    assert [event.get("data") for event in events(response.iter_bytes())] == [text, None]
    assert len(list(httpx.Response(200, content=body).iter_lines())) == 4  # why not those


def test_events_split_anywhere_between_chunks_are_put_back_together() -> None:
    body = ndjson({"type": "stdout", "data": "é" * 10}, EXIT)
    chunks = [body[index:index + 3] for index in range(0, len(body), 3)]

    parsed = list(events(iter(chunks)))

    assert parsed[0] == {"type": "stdout", "data": "é" * 10}
    assert parsed[1]["type"] == "exit"


@pytest.mark.parametrize("line", [b"not json\n", b"[1, 2]\n", b'{"data": "no type"}\n'])
def test_a_line_that_is_not_an_event_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        list(events([line]))


def test_an_error_event_raises_the_error_it_names() -> None:
    collector = CommandEvents()
    collector.feed({"type": "start", "sandbox_id": SANDBOX_ID})

    with pytest.raises(RuntimeFailure, match="the runtime broke"):
        collector.feed({"type": "error",
                        "error": {"code": "runtime_failure", "message": "the runtime broke"}})


def test_a_stream_that_ends_before_its_exit_event_is_a_protocol_error() -> None:
    api = FakeApi().on("POST", "/execute", content=ndjson({"type": "stdout", "data": "x"}))

    with pytest.raises(ProtocolError, match="before its exit event"):
        run("...", on_stdout=print, config=api.config())


def test_unknown_event_kinds_are_passed_over() -> None:
    body = ndjson({"type": "progress", "percent": 50}, {"type": "stdout", "data": "x"}, EXIT)
    api = FakeApi().on("POST", "/execute", content=body)

    assert run("...", on_stdout=lambda _: None, config=api.config()).stdout == "x"


def test_logs_follow_streams_until_the_script_stops() -> None:
    body = ndjson({"type": "start", "sandbox_id": SANDBOX_ID},
                  {"type": "stdout", "data": "tick 0\n"}, {"type": "stdout", "data": "tick 1\n"},
                  {"type": "exit", **record(state="exited", exit_code=0)})
    api = (FakeApi().on("GET", f"/sandboxes/{SANDBOX_ID}", json=record())
           .on("GET", f"/sandboxes/{SANDBOX_ID}/output", content=body))
    seen: list[str] = []

    output = Sandbox.connect(SANDBOX_ID, config=api.config()).logs(follow=True,
                                                                    on_stdout=seen.append)

    assert api.last().url.params["follow"] == "true"
    assert api.last().extensions["timeout"]["read"] is None  # silent scripts are waited for
    assert seen == ["tick 0\n", "tick 1\n"]
    assert (output.state, output.exit_code, output.stdout) == ("exited", 0, "tick 0\ntick 1\n")


def test_logs_follow_ends_with_a_suspend_or_a_delete_too() -> None:
    suspended = ndjson({"type": "state", **record(state="suspended")})
    deleted = ndjson({"type": "deleted", "sandbox_id": SANDBOX_ID})
    api = (FakeApi().on("GET", f"/sandboxes/{SANDBOX_ID}", json=record())
           .on("GET", f"/sandboxes/{SANDBOX_ID}/output", content=suspended)
           .on("GET", f"/sandboxes/{SANDBOX_ID}/output", content=deleted))
    sandbox = Sandbox.connect(SANDBOX_ID, config=api.config())

    states = [sandbox.logs(follow=True).state, sandbox.logs(follow=True).state]

    assert states == ["suspended", "deleted"]
