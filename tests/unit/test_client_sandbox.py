"""The sync Sandbox against a made-up service: what each method sends and how it reads the
answer."""

from __future__ import annotations

import datetime
from pathlib import Path

import httpx
import pytest
from client_support import SANDBOX_ID, FakeApi, error, ndjson, record, result

from sandbox_client import (
    FileEntry,
    FileNotFound,
    InvalidState,
    Sandbox,
    SandboxInfo,
    WriteInfo,
)

BASE = f"/sandboxes/{SANDBOX_ID}"


@pytest.fixture
def api() -> FakeApi:
    return (FakeApi()
            .on("POST", "/sandboxes", status_code=201, json=record())
            .on("GET", BASE, json=record())
            .on("DELETE", BASE, json={"sandbox_id": SANDBOX_ID, "deleted": True}))


def test_create_sends_only_what_it_was_given(api: FakeApi) -> None:
    sandbox = Sandbox.create(packages="six, tablib==3.5.0", memory_mb=256,
                             env={"COLOUR": "blue"}, config=api.config())
    Sandbox.create("bash", config=api.config())

    assert sandbox.sandbox_id == SANDBOX_ID
    assert api.sent_json(0) == {"language": "python", "packages": ["six", "tablib==3.5.0"],
                                "memory_mb": 256, "env": {"COLOUR": "blue"}}
    assert api.sent_json(1) == {"language": "bash"}


def test_info_reads_the_record(api: FakeApi) -> None:
    info = Sandbox.connect(SANDBOX_ID, config=api.config()).info()

    assert isinstance(info, SandboxInfo)
    assert (info.state, info.kind, info.limits.memory_mb) == ("running", "session", 512)
    assert info.created_at == datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert info.raw["idle_timeout_s"] == 900.0


def test_list_filters_by_state() -> None:
    api = FakeApi().on("GET", "/sandboxes", json={"sandboxes": [record(state="suspended")]})

    found = Sandbox.list(state="suspended", config=api.config())

    assert api.last().url.params["state"] == "suspended"
    assert [info.state for info in found] == ["suspended"]


def test_a_context_manager_deletes_the_sandbox_unless_kept(api: FakeApi) -> None:
    with Sandbox.create(config=api.config()):
        pass
    with Sandbox.create(keep=True, config=api.config()):
        pass

    deletes = [request for request in api.requests if request.method == "DELETE"]
    assert len(deletes) == 1


def test_a_kept_sandbox_can_still_be_called_after_its_block(api: FakeApi) -> None:
    with Sandbox.create(keep=True, config=api.config()) as sandbox:
        pass

    assert sandbox.info().state == "running"
    assert sandbox.kill() is True
    sandbox.close()


def test_the_context_manager_deletes_the_sandbox_when_the_block_fails(api: FakeApi) -> None:
    with pytest.raises(ZeroDivisionError), Sandbox.create(config=api.config()):
        1 / 0  # noqa: B018

    assert api.last().method == "DELETE"


def test_kill_says_whether_there_was_anything_to_delete(api: FakeApi) -> None:
    api.on("DELETE", BASE, error(404, "not_found"))
    sandbox = Sandbox.connect(SANDBOX_ID, config=api.config())

    assert [sandbox.kill(), sandbox.kill()] == [True, False]


def test_suspend_and_resume_answer_the_new_record(api: FakeApi) -> None:
    api.on("POST", f"{BASE}/suspend", json=record(state="suspended", reason="asked"))
    api.on("POST", f"{BASE}/restore", json=record(state="running"))
    sandbox = Sandbox.connect(SANDBOX_ID, config=api.config())

    states = [sandbox.suspend().state, sandbox.resume().state]

    assert states == ["suspended", "running"]


def test_a_refused_suspend_is_an_invalid_state(api: FakeApi) -> None:
    api.on("POST", f"{BASE}/suspend", error(409, "invalid_state", "an exec runs"))

    with pytest.raises(InvalidState, match="an exec runs"):
        Sandbox.connect(SANDBOX_ID, config=api.config()).suspend()


def test_a_string_command_is_a_bash_script_and_a_list_is_an_argv(api: FakeApi) -> None:
    api.on("POST", f"{BASE}/exec", json=result(language="bash", stdout="hi\n", exit_code=1))
    sandbox = Sandbox.connect(SANDBOX_ID, config=api.config())

    done = sandbox.commands.run("echo hi; false", env={"A": "1"}, cwd="/tmp", timeout=9)
    sandbox.commands.run(["ls", "-l"], stdin=b"input")
    sandbox.commands.run("print(1)", language="python")

    assert (done.exit_code, done.stdout, done.ok) == (1, "hi\n", False)
    assert api.sent_json(-3) == {"language": "bash", "code": "echo hi; false",
                                 "env": {"A": "1"}, "cwd": "/tmp", "timeout": 9}
    assert api.sent_json(-2) == {"argv": ["ls", "-l"], "stdin": "input"}
    assert api.sent_json(-1) == {"language": "python", "code": "print(1)"}


def test_a_language_with_an_argv_is_refused_before_anything_is_sent(api: FakeApi) -> None:
    sandbox = Sandbox.connect(SANDBOX_ID, config=api.config())
    sent = len(api.requests)

    with pytest.raises(ValueError, match="language goes with a script"):
        sandbox.commands.run(["ls"], language="python")

    assert len(api.requests) == sent


def test_commands_stream_with_callbacks(api: FakeApi) -> None:
    api.on("POST", f"{BASE}/exec", content=ndjson(
        {"type": "start", "sandbox_id": SANDBOX_ID}, {"type": "stdout", "data": "a"},
        {"type": "exit", **{key: value for key, value in result(exit_code=0).items()
                            if key not in ("stdout", "stderr")}}))
    seen: list[str] = []

    done = Sandbox.connect(SANDBOX_ID, config=api.config()).commands.run(
        "echo a", on_stdout=seen.append)

    assert api.last().url.params["stream"] == "true"
    assert (seen, done.stdout, done.exit_code) == (["a"], "a", 0)


def test_a_background_command_returns_once_started_and_is_waited_for(api: FakeApi) -> None:
    api.on("POST", f"{BASE}/exec", content=ndjson(
        {"type": "start", "sandbox_id": SANDBOX_ID}, {"type": "stdout", "data": "late\n"},
        {"type": "exit", "exit_code": 0}))
    seen: list[str] = []

    handle = Sandbox.connect(SANDBOX_ID, config=api.config()).commands.run(
        "sleep 1; echo late", background=True, on_stdout=seen.append)
    done = handle.wait(timeout=10)

    assert handle.sandbox_id == SANDBOX_ID
    assert (done.stdout, done.exit_code, seen) == ("late\n", 0, ["late\n"])
    assert handle.kill() is False  # it had ended


def test_a_background_command_refused_at_once_raises_at_once(api: FakeApi) -> None:
    api.on("POST", f"{BASE}/exec", error(409, "invalid_state", "it is suspended"))
    sandbox = Sandbox.connect(SANDBOX_ID, config=api.config())

    with pytest.raises(InvalidState, match="it is suspended"):
        sandbox.commands.run("true", background=True)


def test_files_are_written_read_and_listed(api: FakeApi) -> None:
    api.on("PUT", f"{BASE}/files/notes/a%20b.txt", status_code=201,
           json={"path": "/workspace/notes/a b.txt", "size": 5})
    api.on("GET", f"{BASE}/files/notes/a%20b.txt", content=b"h\xc3\xa9llo")
    api.on("GET", f"{BASE}/files", json={"path": "/tmp", "entries": [
        {"name": "x.bin", "kind": "file", "size": 3, "modified_at": "2026-01-02T03:04:05+00:00"},
    ]})
    files = Sandbox.connect(SANDBOX_ID, config=api.config()).files

    written = files.write("notes/a b.txt", "héllo")
    text, raw = files.read("notes/a b.txt"), files.read("notes/a b.txt", format="bytes")
    listed = files.list("/tmp")

    assert written == WriteInfo(path="/workspace/notes/a b.txt", size=5)
    assert (text, raw) == ("héllo", b"h\xc3\xa9llo")
    assert api.last().url.params["path"] == "/tmp"
    assert listed == [FileEntry(name="x.bin", path="/tmp/x.bin", kind="file", size=3,
                                modified_at=datetime.datetime(2026, 1, 2, 3, 4, 5,
                                                              tzinfo=datetime.UTC))]


def test_file_paths_cannot_climb_out_of_the_files_route(api: FakeApi) -> None:
    api.on("GET", f"{BASE}/files/%2E%2E/%2E%2E/x", content=b"x")
    api.on("GET", f"{BASE}/files//etc/hostname", content=b"h")
    files = Sandbox.connect(SANDBOX_ID, config=api.config()).files

    assert files.read("../../x") == "x"
    assert files.read("/etc/hostname") == "h"


def test_a_missing_file_is_file_not_found(api: FakeApi) -> None:
    api.on("GET", f"{BASE}/files/nothing", error(404, "file_not_found"))

    with pytest.raises(FileNotFound):
        Sandbox.connect(SANDBOX_ID, config=api.config()).files.read("nothing")


def test_upload_and_download_move_files_a_chunk_at_a_time(
    api: FakeApi, tmp_path: Path
) -> None:
    payload = bytes(range(256)) * 1000  # several chunks
    local = tmp_path / "data.bin"
    local.write_bytes(payload)

    def stored(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"path": "/workspace/data.bin",
                                         "size": len(request.content)})

    api.on("PUT", f"{BASE}/files/data.bin", stored)
    api.on("GET", f"{BASE}/files/data.bin", content=payload)
    files = Sandbox.connect(SANDBOX_ID, config=api.config()).files

    written = files.upload(local)
    copy = files.download("data.bin", tmp_path / "copy.bin")

    assert written.size == len(payload)
    assert api.requests[-2].content == payload
    assert copy.read_bytes() == payload
    assert sorted(path.name for path in tmp_path.iterdir()) == ["copy.bin", "data.bin"]


def test_a_failed_download_leaves_the_old_local_file_and_no_other(
    api: FakeApi, tmp_path: Path
) -> None:
    api.on("GET", f"{BASE}/files/gone", error(404, "file_not_found"))
    target = tmp_path / "kept.txt"
    target.write_text("old")

    with pytest.raises(FileNotFound):
        Sandbox.connect(SANDBOX_ID, config=api.config()).files.download("gone", target)

    assert [path.name for path in tmp_path.iterdir()] == ["kept.txt"]
    assert target.read_text() == "old"


def test_a_detached_script_is_a_sandbox_to_follow(api: FakeApi) -> None:
    api.on("POST", "/execute", status_code=202, json=record(kind="script"))
    api.on("GET", f"{BASE}/output", json={
        "sandbox_id": SANDBOX_ID, "state": "running", "exit_code": None, "stdout": "tick\n",
        "stderr": "", "stdout_truncated": False, "stderr_truncated": False})

    sandbox = Sandbox.run_detached("while True: ...", timeout=300, config=api.config())
    output = sandbox.logs()

    assert dict(api.requests[0].url.params) == {"language": "python", "timeout": "300",
                                                "detach": "true"}
    assert (output.state, output.stdout) == ("running", "tick\n")
