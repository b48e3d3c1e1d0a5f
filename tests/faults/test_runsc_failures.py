"""runsc failing under a real server: missing altogether, given a corrupt checkpoint, or out of
disk for one. Each is a clear answer (never a crash or a 500) and a record that says why."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from integration.server import eventually, ok, records, serving
from integration.support import leftovers, processes_mentioning

from faults.support import COUNTER, DETACH, bash, logged, numbers, tiny_disk
from sandbox.settings import Settings

pytestmark = pytest.mark.runsc


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"]


def test_a_server_whose_runsc_is_missing_is_alive_not_ready_and_answers_503(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with serving(settings, log, ready=False,
                 SANDBOX_RUNSC_PATH="/nonexistent/runsc") as server:
        client = server.client
        health = client.get("/healthz")
        readiness = client.get("/readyz")
        answers = [
            client.post("/execute?language=python", content=b"print(1)\n"),
            client.post("/execute?language=bash&detach=true", content=b"echo 1\n"),
            client.post("/sandboxes", json={}),
        ]
        failed = records(client)
        deleted = [client.delete(f"/sandboxes/{sandbox_id}").status_code
                   for sandbox_id in failed]
        still_alive = server.process.poll() is None and client.get("/healthz").status_code

    assert health.status_code == 200
    assert readiness.status_code == 503
    assert readiness.json()["status"] == "not_ready"
    assert "/nonexistent/runsc" in " ".join(readiness.json()["problems"])
    for answer in answers:
        status, code, message = error_of(answer)
        assert (status, code) == (503, "runtime_failure")
        assert "/readyz" in message
    assert {record["state"] for record in failed.values()} == {"failed"}
    assert {record["reason_code"] for record in failed.values()} == {"create_failed"}
    assert all("/nonexistent" not in record["reason"] for record in failed.values())
    assert {entry["sandbox_id"] for entry in logged(log, "sandbox.create_failed")
            if "cannot start" in entry["detail"]} == set(failed)
    assert deleted == [200] * len(failed)
    assert still_alive == 200
    assert leftovers(settings) == []


def test_a_corrupt_checkpoint_fails_its_restore_clearly_and_the_sandbox_can_be_deleted(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with serving(settings, log) as server:
        client = server.client
        sandbox_id = ok(client.post(DETACH, content=COUNTER), 202)["sandbox_id"]
        eventually(lambda: len(numbers(client, sandbox_id)) > 2, what="the count")
        ok(client.post(f"/sandboxes/{sandbox_id}/suspend"))
        # The image as published in the checkpoint folder (a new key per suspend); written
        # uncompressed, runsc makes several files: the largest holds the memory.
        image = max((settings.state_dir / "checkpoints").glob(f"checkpoint-{sandbox_id}-*/*.img"),
                    key=lambda path: path.stat().st_size)
        os.truncate(image, image.stat().st_size // 2)

        restored = client.post(f"/sandboxes/{sandbox_id}/restore")
        record = ok(client.get(f"/sandboxes/{sandbox_id}"))
        left_while_failed = leftovers(settings)
        deleted = client.delete(f"/sandboxes/{sandbox_id}")

    status, code, message = error_of(restored)
    assert (status, code) == (503, "runtime_failure")
    assert "could not be restored" in message and "now failed" in message
    assert record["state"] == "failed"
    assert (record["reason_code"], record["reason"]) == (
        "restore_failed", "the restore failed: the checkpoint is unusable or the runtime failed")
    # Refused before runsc reads it: the file does not match the image's manifest.
    assert [entry["sandbox_id"] for entry in logged(log, "sandbox.restore_failed")
            if "does not match its manifest" in entry["detail"]] == [sandbox_id]
    assert sorted(left_while_failed) == [f"outputs/{sandbox_id}", f"record {sandbox_id}"]
    assert deleted.status_code == 200
    assert leftovers(settings) == []


def test_a_full_checkpoint_disk_fails_the_suspend_clearly_and_leaves_no_half_written_image(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with tiny_disk(tmp_path / "checkpoints") as checkpoints, \
            serving(settings, log, SANDBOX_CHECKPOINT_DIR=str(checkpoints),
                    # Compressed, an idle sandbox's image (3 MB) fits the tiny disk and the
                    # big one's does not; uncompressed (the default), neither would.
                    SANDBOX_CHECKPOINT_COMPRESSION="flate-best-speed") as server:
        client = server.client
        small = ok(client.post("/sandboxes", json={}), 201)["sandbox_id"]
        big = ok(client.post("/sandboxes", json={}), 201)["sandbox_id"]
        bash(client, big, "head -c 16000000 /dev/urandom > /workspace/big.bin")

        refused = client.post(f"/sandboxes/{big}/suspend")
        record = ok(client.get(f"/sandboxes/{big}"))
        in_folder = sorted(entry.name for entry in checkpoints.iterdir())
        processes = processes_mentioning(big)
        exec_after = client.post(f"/sandboxes/{big}/exec", json={"argv": ["true"]})
        deleted = client.delete(f"/sandboxes/{big}")
        small_suspended = ok(client.post(f"/sandboxes/{small}/suspend"))
        small_restored = ok(client.post(f"/sandboxes/{small}/restore"))
        ok(client.delete(f"/sandboxes/{small}"))
        left_in_folder = list(checkpoints.iterdir())

    status, code, message = error_of(refused)
    assert (status, code) == (503, "runtime_failure")
    assert "suspend failed" in message and "now failed" in message
    assert record["state"] == "failed"
    assert (record["reason_code"], record["reason"]) == (
        "suspend_failed", "the suspend failed and ended the sandbox")
    assert [entry["sandbox_id"] for entry in logged(log, "sandbox.suspend_failed")
            if "no space left on device" in entry["detail"].lower()] == [big]
    assert in_folder == []
    assert processes == []
    assert exec_after.status_code == 409
    assert deleted.status_code == 200
    assert (small_suspended["state"], small_restored["state"]) == ("suspended", "running")
    assert left_in_folder == []
    assert leftovers(settings) == []
