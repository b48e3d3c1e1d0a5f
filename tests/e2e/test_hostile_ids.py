"""An id the server did not make names no sandbox: whatever it holds, the answer is a 404 and
nothing beyond the id check sees it."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from sandbox.adapters.fake import FakeSandboxRuntime

# The client removes literal `.` and `..` segments before sending; encoded, they reach the server.
HOSTILE_IDS = [
    "%2e", "%2e%2e", "..%2F..%2Fetc", "a%2Fb", "--root=%2F", "-rf", "0" * 23, "0" * 25,
    "A" * 24, "0" * 24 + "%0A", "0" * 23 + "%00", "x" * 5000, "ünïcødé", "%F0%9F%92%A3",
    "0" * 22 + "%20%20", "$(reboot)", "*",
]
CALLS = [
    ("GET", "/sandboxes/{id}"),
    ("DELETE", "/sandboxes/{id}"),
    ("POST", "/sandboxes/{id}/exec"),
    ("POST", "/sandboxes/{id}/suspend"),
    ("POST", "/sandboxes/{id}/restore"),
    ("GET", "/sandboxes/{id}/output"),
    ("GET", "/sandboxes/{id}/output?follow=true"),
    ("GET", "/sandboxes/{id}/files"),
    ("GET", "/sandboxes/{id}/files/etc/passwd"),
    ("PUT", "/sandboxes/{id}/files/x"),
    ("GET", "/suspend/{id}"),
    ("POST", "/restore/{id}"),
    ("GET", "/delete/{id}"),
]


@pytest.fixture
def untouchable(runtime: FakeSandboxRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the runtime was reached with {args}")

    for name in ("exec", "checkpoint", "restore", "destroy", "write_file", "read_file",
                 "list_files", "launch", "wait"):
        monkeypatch.setattr(runtime, name, refuse)


@pytest.mark.usefixtures("untouchable")
@pytest.mark.parametrize(("method", "path"), CALLS)
def test_a_hostile_id_is_a_404(client: TestClient, method: str, path: str) -> None:
    for sandbox_id in HOSTILE_IDS:
        response = client.request(method, path.format(id=sandbox_id), json={"argv": ["ls"]})

        assert response.status_code == 404, (sandbox_id, response.text)
        assert response.json()["error"]["code"] == "not_found"
        assert len(response.text) < 1000
