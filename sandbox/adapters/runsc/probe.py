"""Readiness proven by a real sandbox: static checks (runsc answers, the rootfs is there) do not
show whether runsc can start sandboxes here (measured: in a chroot runsc cannot make its
namespaces, and `/readyz` said ready while every `/execute` failed).

The probe's answer is kept for OK_FOR_S when good; a failure of any real sandbox start makes
the next readiness check probe again (`stale`), and a failed probe is tried again at most
every RETRY_S, so that a readiness probe polled every second costs at most a sandbox every
few seconds, and one that passes costs one every few minutes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

OK_FOR_S = 300.0
RETRY_S = 5.0

Probe = Callable[[], Awaitable[str | None]]


class ReadinessProbe:
    def __init__(self, probe: Probe, clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe
        self._clock = clock
        self._lock = asyncio.Lock()
        self._problem: str | None = None
        self._valid_until = 0.0

    def stale(self) -> None:
        """A real sandbox failed to start: the next check runs the probe again."""
        self._valid_until = 0.0

    async def problem(self) -> str | None:
        """None when a probe sandbox ran (lately), else why it did not."""
        async with self._lock:
            if self._clock() < self._valid_until:
                return self._problem
            started = self._clock()
            problem = await self._probe()
            if problem is not None:
                log.warning("runsc.probe_failed", problem=problem)
            elif self._problem is not None or self._valid_until == 0.0:
                log.info("runsc.probe_passed", ms=int((self._clock() - started) * 1000))
            self._problem = problem
            self._valid_until = self._clock() + (OK_FOR_S if problem is None else RETRY_S)
            return problem
