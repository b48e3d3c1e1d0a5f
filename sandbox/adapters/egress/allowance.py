"""Per-sandbox caps on egress: connections open at once, new connections a second, and bytes
each way (from the sandbox's start or restore)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sandbox.adapters.egress.outcome import Cut, Refused


@dataclass(frozen=True)
class EgressLimits:
    max_connections: int = 32
    connections_per_s: float = 20.0
    max_bytes: int = 1024 * 1024 * 1024
    idle_timeout_s: float = 120.0
    total_timeout_s: float = 900.0
    connect_timeout_s: float = 10.0
    resolve_timeout_s: float = 10.0


class Allowance:
    """One sandbox's share. Not thread-safe: used from the event loop only."""

    def __init__(self, limits: EgressLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self.open = 0
        self.sent = 0
        self.received = 0
        # A token bucket: a burst of `connections_per_s`, refilled at that rate.
        self._tokens = max(limits.connections_per_s, 1.0)
        self._filled_at = clock()

    def admit(self) -> None:
        """Take a place for a new connection; Refused when a cap says no."""
        limits = self._limits
        if self.open >= limits.max_connections:
            raise Refused("refused_limit", f"this sandbox has {self.open} egress connections "
                          f"open, the most allowed ({limits.max_connections})")
        now = self._clock()
        burst = max(limits.connections_per_s, 1.0)
        self._tokens = min(burst, self._tokens + (now - self._filled_at) * limits.connections_per_s)
        self._filled_at = now
        if self._tokens < 1:
            raise Refused("refused_limit", "this sandbox opens egress connections faster than "
                          f"the {limits.connections_per_s:g} a second allowed")
        if self.sent >= limits.max_bytes or self.received >= limits.max_bytes:
            raise Refused("refused_limit", "this sandbox has used its egress allowance of "
                          f"{limits.max_bytes} bytes each way")
        self._tokens -= 1
        self.open += 1

    def release(self) -> None:
        self.open -= 1

    def count_sent(self, size: int) -> None:
        self.sent += size
        if self.sent > self._limits.max_bytes:
            raise Cut("cut_bytes", f"more than {self._limits.max_bytes} bytes sent")

    def count_received(self, size: int) -> None:
        self.received += size
        if self.received > self._limits.max_bytes:
            raise Cut("cut_bytes", f"more than {self._limits.max_bytes} bytes received")
