"""The server killed with SIGKILL, or stopped with SIGTERM, with sandboxes in every state: the
next server on the same state folder settles each record and leaves no orphan behind."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from integration.server import eventually, ok, records, serving
from integration.support import leftovers, processes_mentioning

from faults.support import (
    COUNTER,
    DETACH,
    SILENT,
    bash,
    numbers,
    stdout,
)
from sandbox.settings import Settings

pytestmark = pytest.mark.runsc

GRACE_S = 30


def test_after_a_kill_9_a_new_server_settles_every_sandbox_and_no_orphan_is_left(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with serving(settings, log) as first:
        client = first.client
        script = ok(client.post(DETACH, content=SILENT), 202)["sandbox_id"]
        session = ok(client.post("/sandboxes", json={}), 201)["sandbox_id"]
        bash(client, session, "echo kept > /workspace/kept.txt")
        counter = ok(client.post(DETACH, content=COUNTER), 202)["sandbox_id"]
        eventually(lambda: stdout(client, script) == "started\n", what="the script's start")
        eventually(lambda: len(numbers(client, counter)) > 3, what="the count")
        ok(client.post(f"/sandboxes/{counter}/suspend"))
        before = numbers(client, counter)
        killed = first.kill()
    orphans = processes_mentioning(str(settings.state_dir))

    with serving(settings, log) as second:
        client = second.client
        reconciled = records(client)
        left_after_reconcile = leftovers(settings)
        restored = [ok(client.post(f"/sandboxes/{sandbox_id}/restore"))["state"]
                    for sandbox_id in (counter, session)]
        after = eventually(lambda: (found := numbers(client, counter))[len(before) + 5:] and found,
                           what="the count after the restore")
        kept = bash(client, session, "cat /workspace/kept.txt")
        script_output = stdout(client, script)
        deleted = [client.delete(f"/sandboxes/{sandbox_id}").status_code
                   for sandbox_id in (script, session, counter)]
        stopped = second.stop()

    assert killed == -signal.SIGKILL
    assert orphans != []  # the crash left the runsc processes of two sandboxes running
    assert {sandbox_id: (record["state"], record["reason_code"])
            for sandbox_id, record in reconciled.items()} == {
        counter: ("suspended", "suspended"),
        session: ("suspended", "server_restarted"),
        script: ("exited", "server_restarted"),
    }
    # Nothing runs after the reconcile: no container, no process, no cgroup; only the
    # suspended sandboxes keep a bundle and a published checkpoint (a new key per suspend).
    assert sorted(re.sub(r"-[0-9a-f]{8}$", "", entry) for entry in left_after_reconcile
                  if not entry.startswith(("record ", "outputs/"))) == sorted(
        [f"bundles/{sandbox_id}" for sandbox_id in (counter, session)]
        + [f"checkpoints/checkpoint-{sandbox_id}" for sandbox_id in (counter, session)])
    assert restored == ["running", "running"]
    assert after[:len(before)] == before
    assert after == list(range(len(after)))
    assert kept == "kept\n"
    assert script_output == "started\n"
    assert deleted == [200, 200, 200]
    assert stopped == 0  # a graceful stop
    assert leftovers(settings) == []


def test_sigterm_suspends_a_session_that_restores_with_its_files_after_a_restart(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    grace = {"SANDBOX_SHUTDOWN_GRACE_S": str(GRACE_S)}
    with serving(settings, log, **grace) as first:
        session = ok(first.client.post("/sandboxes", json={}), 201)["sandbox_id"]
        bash(first.client, session, "echo work > /workspace/work.txt; echo tmp > /tmp/t.txt")
        # The bound is the grace period and a margin for the process to end, against a hang.
        stopped = first.stop(bound_s=GRACE_S + 15)
    processes = processes_mentioning(str(settings.state_dir))

    with serving(settings, log, **grace) as second:
        record = ok(second.client.get(f"/sandboxes/{session}"))
        restored = ok(second.client.post(f"/sandboxes/{session}/restore"))
        kept = bash(second.client, session, "cat /workspace/work.txt /tmp/t.txt")
        deleted = second.client.delete(f"/sandboxes/{session}").status_code

    assert stopped == 0  # a graceful stop (uvicorn would re-raise the signal: the server does not)
    assert processes == []
    assert (record["state"], record["reason_code"], record["reason"]) == (
        "suspended", "server_stopped", "suspended when the server stopped")
    assert restored["state"] == "running"
    assert kept == "work\ntmp\n"
    assert deleted == 200
    assert leftovers(settings) == []
