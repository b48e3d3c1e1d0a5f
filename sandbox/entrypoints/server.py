"""How uvicorn serves the app: the options `python -m sandbox` uses (tests serve with the
same), and a deadline for request heads, which uvicorn lacks.

uvicorn's keep-alive timer stops at the first byte a client sends, and nothing times a
connection before its first request, so a client sending its head a byte at a time would hold
its connection (and a place under `limit_concurrency`) for ever.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, ClassVar

import structlog
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from sandbox.settings import Settings

log = structlog.get_logger(__name__)


class HeadDeadlineH11Protocol(H11Protocol):
    """Closes a connection whose next request head has not fully arrived `head_timeout_s`
    after the connection opened or the previous answer ended."""

    head_timeout_s: ClassVar[float] = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request head arrived: its body has its own deadline
            self._stop_head_timer()

    def on_response_complete(self) -> None:
        # Armed first: the parent may go on to a pipelined request, which disarms it again.
        self._await_head()
        super().on_response_complete()

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.info("http.head_timeout", timeout_s=self.head_timeout_s)
            self.transport.close()


# What serving needs whatever the settings; `server_config` adds what they decide.
SERVER_OPTIONS: dict[str, Any] = {
    "log_config": None,  # keep the logging `python -m sandbox` configured
    "access_log": False,  # the app logs `http.request` with the request id and duration
    # h11 bounds the request head it buffers (httptools does not); its speed is irrelevant
    # next to the start of a sandbox.
    "http": HeadDeadlineH11Protocol,
    "h11_max_incomplete_event_size": 16 * 1024,
    "timeout_keep_alive": 5,
    # Not uvloop: its connect_read_pipe and connect_write_pipe close a pipe's descriptor twice
    # (uvloop issue 763), and under load the second close hit a descriptor another thread had
    # just been given (seen here: rmtree of a bundle failed with EBADF). The sandboxes' pipes
    # are the server's main traffic; asyncio's own loop closes each once.
    "loop": "asyncio",
}


def server_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    protocol = type("HeadDeadlineH11Protocol", (HeadDeadlineH11Protocol,),
                    {"head_timeout_s": settings.request_read_timeout_s})
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        **{**SERVER_OPTIONS, "http": protocol},
        ws="none",
        lifespan="on",
        # Connections beyond this are answered 503 at once instead of piling up.
        limit_concurrency=settings.max_connections,
        # On a stop, requests still open past the grace period are cancelled: the
        # checkpoints of what runs (begun at the signal) must end within it too.
        timeout_graceful_shutdown=max(int(settings.shutdown_grace_s), 1),
    )


class GracefulServer(uvicorn.Server):
    """uvicorn's server, which tells `on_stop` as soon as a stop is asked for (so that what
    runs is checkpointed while the last requests drain), and exits with status 0 after a
    graceful stop on SIGTERM. uvicorn itself raises the signal again once it has shut down,
    so the process ended "killed by SIGTERM" (143 to a shell, a failure to a supervisor)."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop = on_stop

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            self._captured_signals.remove(sig)
        self._on_stop()
