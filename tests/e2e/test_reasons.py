"""A record says why a sandbox is in its state with a code and a sentence of the service's
own; what runsc said (host paths, versions) stays in the server's log."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.support import Service, create_session, wait_for_state
from sandbox.domain.errors import RuntimeFailure

RUNSC_SAID = ("runsc restore failed: open /var/lib/gvisor-sandbox/state/checkpoints/"
              "0123/checkpoint.img: no such file or directory (runsc 0.0~20240729)")


def test_an_exited_script_has_a_reason_code(service: Service) -> None:
    started = service.client.post("/execute?language=bash&detach=true", content=b"exit 4\n")

    record = wait_for_state(service.client, started.json()["sandbox_id"], "exited")

    assert (record["reason_code"], record["reason"]) == ("exited", "exited with code 4")


def test_a_failed_restore_shows_a_code_and_no_word_of_runsc(
    service: Service, monkeypatch: pytest.MonkeyPatch, logs: list[dict[str, Any]]
) -> None:
    client = service.client
    sandbox_id = create_session(client)
    client.post(f"/sandboxes/{sandbox_id}/suspend")

    async def broken(*args: object) -> None:
        raise RuntimeFailure(RUNSC_SAID)

    monkeypatch.setattr(service.runtime, "restore", broken)
    answer = client.post(f"/sandboxes/{sandbox_id}/restore")
    record = client.get(f"/sandboxes/{sandbox_id}").json()
    listed = client.get("/sandboxes").text

    assert answer.status_code == 503
    assert (record["state"], record["reason_code"]) == ("failed", "restore_failed")
    for shown in (answer.text, str(record), listed):
        assert "/var/lib" not in shown and "runsc" not in shown
    logged = [entry for entry in logs if entry["event"] == "sandbox.restore_failed"]
    assert [(entry["sandbox_id"], entry["detail"]) for entry in logged] == [
        (sandbox_id, RUNSC_SAID)]
