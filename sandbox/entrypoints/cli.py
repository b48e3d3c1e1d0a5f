"""`python -m sandbox`: read the settings, configure logging, then serve."""

from __future__ import annotations

import sys

import structlog
import uvicorn

from sandbox.entrypoints.app import create_app
from sandbox.logs import configure_logging
from sandbox.settings import Settings, SettingsError

log = structlog.get_logger(__name__)


def main() -> None:
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_format, settings.log_level)
    except SettingsError as error:
        _fail(str(error))
    except ValueError as error:  # from configure_logging: the level is checked there
        _fail(f"SANDBOX_LOG_LEVEL: {error}")
    log.info("server.starting", host=settings.host, port=settings.port, runtime=settings.runtime)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the logging configured above
        access_log=False,  # the app logs `http.request` with the request id and duration
        # h11 bounds the request head it buffers (httptools does not); its speed is irrelevant
        # next to the start of a sandbox.
        http="h11",
        h11_max_incomplete_event_size=16 * 1024,
        timeout_keep_alive=5,
    )


def _fail(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr)
    sys.exit(2)
