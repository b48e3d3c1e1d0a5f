"""Logging: structlog for our lines, and the stdlib root logger (uvicorn's) through the same
processors, so every line has one format and carries the request's bound context."""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import Processor

LEVELS = ("debug", "info", "warning", "error", "critical")


def configure_logging(format: str, level: str) -> None:
    """Render JSON lines (`json`) or a readable console (`console`) on stdout."""
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # Not cached, so that configuring again (tests, capture_logs) reaches module-level loggers.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_renderers(format),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric_level)
    # uvicorn configures its own handlers only when given a log_config; make sure they are gone.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


def _renderers(format: str) -> list[Processor]:
    if format == "console":
        # The console renderer prints tracebacks itself (and warns if they are already strings).
        return [structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())]
    return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
