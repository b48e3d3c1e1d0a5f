"""A made-up service for the SDK's unit tests: httpx.MockTransport answering canned replies
per (method, path), recording every request it was sent."""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from sandbox_client import ConnectionConfig

URL = "http://sandbox.test"
SANDBOX_ID = "a" * 24
Handler = Callable[[httpx.Request], httpx.Response]


def record(sandbox_id: str = SANDBOX_ID, state: str = "running", **fields: Any) -> dict[str, Any]:
    """A sandbox record as the service answers it."""
    return {
        "sandbox_id": sandbox_id, "kind": "session", "state": state, "language": "python",
        "created_at": "2026-01-02T03:04:05+00:00", "updated_at": "2026-01-02T03:04:06+00:00",
        "exit_code": None, "reason": "", "idle_timeout_s": 900.0,
        "limits": {"timeout_s": 30.0, "memory_mb": 512, "cpus": 1.0, "pids": 256,
                   "open_files": 1024, "output_bytes": 1048576},
        **fields,
    }


def result(sandbox_id: str = SANDBOX_ID, **fields: Any) -> dict[str, Any]:
    """The result of an execution as the service answers it."""
    return {
        "sandbox_id": sandbox_id, "language": "python", "exit_code": 0, "timed_out": False,
        "oom_killed": False, "stdout": "", "stderr": "", "stdout_truncated": False,
        "stderr_truncated": False, "duration_ms": 12, **fields,
    }


def ndjson(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(event, ensure_ascii=False).encode() + b"\n" for event in events)


def error(status: int, code: str, message: str = "no",
          headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}},
                          headers=headers)


@dataclass
class FakeApi:
    """Replies queued per (method, path); the last one of a route is repeated."""

    replies: dict[tuple[str, str], deque[httpx.Response | Handler]] = field(
        default_factory=lambda: defaultdict(deque))
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, reply: httpx.Response | Handler | None = None,
           **response: Any) -> FakeApi:
        self.replies[(method, path)].append(
            reply if reply is not None else httpx.Response(**{"status_code": 200, **response}))
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        queued = self.replies.get((request.method, request.url.raw_path.decode().split("?")[0]))
        if not queued:
            return error(404, "not_found", f"no reply for {request.method} {request.url}")
        reply = queued.popleft() if len(queued) > 1 else queued[0]
        if callable(reply):
            return reply(request)
        return httpx.Response(reply.status_code, headers=reply.headers, content=reply.content)

    def config(self, **fields: Any) -> ConnectionConfig:
        return ConnectionConfig(url=URL, transport=httpx.MockTransport(self), **fields)

    def last(self) -> httpx.Request:
        return self.requests[-1]

    def sent_json(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)
