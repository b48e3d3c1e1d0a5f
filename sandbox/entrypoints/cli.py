"""`python -m sandbox`: read the settings, configure logging, then serve."""

from __future__ import annotations

import asyncio
import os
import sys

import structlog

from sandbox.containers import Container
from sandbox.entrypoints.app import create_app
from sandbox.entrypoints.server import SERVER_OPTIONS, GracefulServer, server_config
from sandbox.logs import configure_logging
from sandbox.settings import Settings, SettingsError

log = structlog.get_logger(__name__)

# SERVER_OPTIONS is re-exported for the tests that serve the app as this command does.
__all__ = ["SERVER_OPTIONS", "main"]

# As uvicorn's own command line: 2 is kept for bad settings.
STARTUP_FAILED = 3


def main() -> None:
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_format, settings.log_level)
    except SettingsError as error:
        _fail(str(error))
    except ValueError as error:  # from configure_logging: the level is checked there
        _fail(f"SANDBOX_LOG_LEVEL: {error}")
    # Only the digests are kept; the tokens must not reach the processes we start (pip, runsc).
    os.environ.pop("SANDBOX_API_TOKENS", None)
    log.info("server.starting", host=settings.host, port=settings.port, runtime=settings.runtime)
    container = Container(settings=settings)
    stop_requested = container.stop_requested()
    server = GracefulServer(server_config(create_app(settings, container), settings),
                            on_stop=lambda: _set_soon(stop_requested))
    server.run()
    if not server.started:
        # The app refused to start (SANDBOX_REQUIRE_CGROUPS on a host without cgroups, say):
        # the log says why; a service manager must see a failure, not a clean exit.
        print("sandbox: the server did not start; the log above says why", file=sys.stderr)
        sys.exit(STARTUP_FAILED)


def _set_soon(event: asyncio.Event) -> None:
    """Set the event from a signal handler: through the loop, which it also wakes."""
    try:
        asyncio.get_running_loop().call_soon_threadsafe(event.set)
    except RuntimeError:  # no loop runs (yet, or any more)
        event.set()


def _fail(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr)
    sys.exit(2)
