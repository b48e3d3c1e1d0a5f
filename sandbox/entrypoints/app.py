"""The Starlette application: routes, middleware, error answers, and the container's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from sandbox.containers import Container
from sandbox.entrypoints.errors import EXCEPTION_HANDLERS
from sandbox.entrypoints.handlers import execute, health
from sandbox.entrypoints.middleware import (
    InternalErrorMiddleware,
    RequestBodyDeadlineMiddleware,
    RequestIdMiddleware,
)
from sandbox.settings import Settings

log = structlog.get_logger(__name__)

routes = [
    Route("/execute", execute.execute_script, methods=["POST"]),
    Route("/healthz", health.report_liveness, methods=["GET"]),
    Route("/readyz", health.report_readiness, methods=["GET"]),
]

HANDLER_MODULES = (execute, health)


def create_app(settings: Settings, container: Container | None = None) -> Starlette:
    """The app for these settings; a given container must have been built from them."""
    container = container if container is not None else Container(settings=settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Wiring is global to the process: undone on the way out, so each app (and each test)
        # gets its own container.
        container.wire(modules=HANDLER_MODULES)
        try:
            await _completed(container.init_resources())
            log.info("app.started", runtime=settings.runtime)
            try:
                yield
            finally:
                await _completed(container.shutdown_resources())
                log.info("app.stopped")
        finally:
            container.unwire()

    return Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(InternalErrorMiddleware),
            Middleware(RequestBodyDeadlineMiddleware, timeout_s=settings.request_read_timeout_s),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )


async def _completed(pending: Awaitable[Any] | None) -> None:
    # dependency-injector returns an awaitable only when some resource is asynchronous.
    if pending is not None:
        await pending
