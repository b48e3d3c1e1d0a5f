from __future__ import annotations

import time

from e2e.support import StartService, app_on, create_session, wait_for_state
from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.settings import Settings


def test_a_suspended_session_survives_a_restart_and_restores(settings: Settings) -> None:
    runtime = FakeSandboxRuntime()  # the sandboxes' runtime outlives the server
    with app_on(settings, runtime) as client:
        sandbox_id = create_session(client)
        client.put(f"/sandboxes/{sandbox_id}/files/kept.txt", content=b"still here")
        client.post(f"/sandboxes/{sandbox_id}/suspend")

    with app_on(settings, runtime) as client:
        listed = client.get("/list").json()["sandboxes"]
        restored = client.post(f"/restore/{sandbox_id}")
        kept = client.get(f"/sandboxes/{sandbox_id}/files/kept.txt")

    assert [(record["sandbox_id"], record["state"]) for record in listed] == [
        (sandbox_id, "suspended")]
    assert restored.status_code == 200
    assert restored.json()["state"] == "running"
    assert kept.content == b"still here"


def test_a_session_saved_when_the_server_stopped_is_restored_by_its_next_call(
    settings: Settings,
) -> None:
    runtime = FakeSandboxRuntime()
    with app_on(settings, runtime) as client:
        execs, writes = create_session(client), create_session(client)
        for sandbox_id in (execs, writes):
            client.put(f"/sandboxes/{sandbox_id}/files/kept.txt", content=b"still here")

    with app_on(settings, runtime) as client:
        saved = {sandbox_id: client.get(f"/sandboxes/{sandbox_id}").json()["reason_code"]
                 for sandbox_id in (execs, writes)}
        executed = client.post(f"/sandboxes/{execs}/exec",
                               json={"language": "bash", "code": "cat kept.txt"})
        written = client.put(f"/sandboxes/{writes}/files/more.txt", content=b"more")
        states = [client.get(f"/sandboxes/{sandbox_id}").json()["state"]
                  for sandbox_id in (execs, writes)]

    assert saved == {execs: "server_stopped", writes: "server_stopped"}
    assert executed.status_code == 200, executed.text
    assert written.status_code in (200, 201), written.text
    assert states == ["running", "running"]


def test_a_finished_scripts_record_and_output_survive_a_restart(settings: Settings) -> None:
    runtime = FakeSandboxRuntime()
    with app_on(settings, runtime) as client:
        sandbox_id = client.post("/execute?language=bash&detach=true",
                                 content=b"echo kept\nexit 2\n").json()["sandbox_id"]
        wait_for_state(client, sandbox_id, "exited")

    with app_on(settings, runtime) as client:
        output = client.get(f"/sandboxes/{sandbox_id}/output").json()

    assert (output["state"], output["exit_code"], output["stdout"]) == ("exited", 2, "kept\n")


def test_an_idle_session_is_suspended_by_the_reaper(start_service: StartService) -> None:
    client = start_service(reap_interval_s=0.05).client
    busy = create_session(client, idle_timeout=30)
    idle = create_session(client, idle_timeout=0.2)

    record = wait_for_state(client, idle, "suspended")

    assert "idle" in record["reason"]
    assert client.get(f"/sandboxes/{busy}").json()["state"] == "running"


def test_an_ended_sandbox_is_deleted_after_its_retention(start_service: StartService) -> None:
    client = start_service(reap_interval_s=0.05, retention_s=0.2).client
    sandbox_id = client.post("/execute?language=bash&detach=true",
                             content=b"exit 0\n").json()["sandbox_id"]

    deadline = time.monotonic() + 3
    while client.get(f"/sandboxes/{sandbox_id}").status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_app_stops_at_once_with_sandboxes_running(settings: Settings) -> None:
    with app_on(settings, FakeSandboxRuntime()) as client:
        create_session(client)
        client.post("/execute?language=bash&detach=true", content=b"sleep 5\n")
        started = time.monotonic()

    assert time.monotonic() - started < 2
