"""How one egress connection went: what it asked for, what it moved, how it ended."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sandbox.domain.metrics import EgressVerdict

# The status a refusal answers with, and its RFC 9209 Proxy-Status error type.
STATUS: dict[EgressVerdict, tuple[int, str]] = {
    "refused_policy": (403, "http_request_denied"),
    "refused_address": (403, "destination_ip_prohibited"),
    "refused_limit": (429, "connection_limit_reached"),
    "failed_upstream": (502, "destination_unavailable"),
    "bad_request": (400, "http_request_error"),
}


class Refused(Exception):
    """The connection ends here, before anything was relayed, with this verdict and why."""

    def __init__(self, verdict: EgressVerdict, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.verdict = verdict
        self.reason = reason
        self.status = status or STATUS.get(verdict, (502, ""))[0]


class Cut(Exception):
    """A relayed connection ended part-way by a cap."""

    def __init__(self, verdict: EgressVerdict, reason: str) -> None:
        super().__init__(reason)
        self.verdict = verdict
        self.reason = reason


@dataclass
class Report:
    sandbox_id: str
    host: str = ""
    port: int = 0
    address: str = ""
    sent: int = 0  # out of the sandbox
    received: int = 0  # into it
    verdict: EgressVerdict = "relayed"
    reason: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started
