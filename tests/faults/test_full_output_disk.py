"""The disk that keeps detached output fills up while a script prints: the sandbox ends
`failed`, saying why, its memory is given back, nothing is left on the host, and the server
serves on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from integration.server import eventually, ok, serving
from integration.support import leftovers, processes_mentioning

from faults.support import DETACH, logged, stdout, tiny_disk
from sandbox.settings import Settings

pytestmark = pytest.mark.runsc

FLOOD = b'line = "x" * 1000\nwhile True:\n    print(line, flush=True)\n'


def ended(client: httpx.Client, sandbox_id: str) -> dict[str, Any] | None:
    record: dict[str, Any] = ok(client.get(f"/sandboxes/{sandbox_id}"))
    return None if record["state"] == "running" else record


def memory_held_mb(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("sandbox_capacity_memory_mb "):
            return float(line.split()[1])
    raise AssertionError("no sandbox_capacity_memory_mb in /metrics")


def test_a_full_output_disk_ends_the_printing_script_failed_and_the_server_serves_on(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with tiny_disk(settings.state_dir / "outputs", size="64k"), \
            serving(settings, log) as server:
        client = server.client
        flooding = ok(client.post(DETACH, content=FLOOD), 202)["sandbox_id"]
        record = eventually(lambda: ended(client, flooding), what="the end of the flood")
        processes = processes_mentioning(flooding)
        held_mb = memory_held_mb(client)
        deleted = client.delete(f"/sandboxes/{flooding}").status_code
        after = ok(client.post(DETACH, content=b'print("after")\n'), 202)["sandbox_id"]
        after_record = eventually(lambda: ended(client, after), what="the next script's end")
        after_output = stdout(client, after)
        ok(client.delete(f"/sandboxes/{after}"))
        executed = ok(client.post("/execute?language=python", content=b'print("hi")\n'))

    assert (record["state"], record["reason_code"]) == ("failed", "output_failed")
    assert "outputs" not in record["reason"]
    assert [entry["sandbox_id"] for entry in logged(log, "sandbox.output_failed")
            if "No space left on device" in entry["detail"]] == [flooding]
    assert processes == []
    assert held_mb == 0
    assert deleted == 200
    assert (after_record["state"], after_output) == ("exited", "after\n")
    assert executed["stdout"] == "hi\n"
    assert leftovers(settings) == []
