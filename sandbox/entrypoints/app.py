"""The Starlette application: routes, middleware, error answers, and the container's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from sandbox.containers import Container
from sandbox.entrypoints.auth import BearerTokenMiddleware
from sandbox.entrypoints.browsers import BrowserGuardMiddleware
from sandbox.entrypoints.errors import EXCEPTION_HANDLERS
from sandbox.entrypoints.handlers import (
    contexts,
    execs,
    execute,
    files,
    health,
    metrics,
    output,
    sandboxes,
)
from sandbox.entrypoints.http_metrics import HttpMetricsMiddleware
from sandbox.entrypoints.middleware import (
    AmbiguousFramingMiddleware,
    InternalErrorMiddleware,
    RequestBodyDeadlineMiddleware,
    RequestIdMiddleware,
)
from sandbox.entrypoints.openapi import serve_openapi
from sandbox.entrypoints.routing import route
from sandbox.settings import Settings

log = structlog.get_logger(__name__)

_ID = "/sandboxes/{sandbox_id}"
_CONTEXT = f"{_ID}/contexts/{{context_id}}"

routes = [
    route("/execute", POST=execute.execute_script),
    route("/list", GET=sandboxes.list_sandboxes),
    # The calls of the original README act on GET as written there, but never on HEAD.
    route("/suspend/{sandbox_id}", answers_head=False,
          GET=sandboxes.suspend_sandbox, POST=sandboxes.suspend_sandbox),
    route("/restore/{sandbox_id}", answers_head=False,
          GET=sandboxes.restore_sandbox, POST=sandboxes.restore_sandbox),
    route("/delete/{sandbox_id}", answers_head=False,
          GET=sandboxes.delete_sandbox, POST=sandboxes.delete_sandbox),
    route("/sandboxes", GET=sandboxes.list_sandboxes, POST=sandboxes.create_sandbox),
    route(_ID, GET=sandboxes.inspect_sandbox, DELETE=sandboxes.delete_sandbox),
    route(f"{_ID}/exec", POST=execs.exec_in_sandbox),
    route(f"{_ID}/suspend", POST=sandboxes.suspend_sandbox),
    route(f"{_ID}/restore", POST=sandboxes.restore_sandbox),
    route(f"{_ID}/output", GET=output.read_output),
    route(f"{_ID}/files", GET=files.list_files),
    route(f"{_ID}/files/{{path:path}}", GET=files.download_file, PUT=files.upload_file),
    route(f"{_ID}/contexts", GET=contexts.list_contexts, POST=contexts.create_context),
    route(_CONTEXT, DELETE=contexts.delete_context),
    route(f"{_CONTEXT}/run", POST=contexts.run_cell),
    route(f"{_CONTEXT}/interrupt", POST=contexts.interrupt_context),
    route(f"{_CONTEXT}/restart", POST=contexts.restart_context),
    route("/healthz", GET=health.report_liveness),
    route("/readyz", GET=health.report_readiness),
    route("/metrics", GET=metrics.serve_metrics),
    route("/openapi.json", GET=serve_openapi),
]

HANDLER_MODULES = (contexts, execs, execute, files, health, metrics, output, sandboxes)

# What the pages of SANDBOX_CORS_ORIGINS may send and read.
CORS_METHODS = ["GET", "POST", "PUT", "DELETE"]
CORS_HEADERS = ["Authorization", "Content-Type", "X-Request-ID"]
CORS_EXPOSED_HEADERS = ["X-Request-ID", "Retry-After", "Location"]


def create_app(settings: Settings, container: Container | None = None) -> Starlette:
    """The app for these settings; a given container must have been built from them."""
    container = container if container is not None else Container(settings=settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Wiring is global to the process: undone on the way out, so each app (and each test)
        # gets its own container.
        container.wire(modules=HANDLER_MODULES)
        try:
            # The runtime first, alone: when it refuses to start (no cgroups where they are
            # required) nothing else is half-started. A start abandoned while it spawns a
            # process (the installer's pip --version) can hang asyncio's own shutdown.
            await _completed(container.runtime.init())
            await _completed(container.init_resources())
            # Says how requests are authenticated, never with what; loudly when they are not.
            say = log.warning if settings.auth_mode == "unauthenticated-allowed" else log.info
            say("auth.mode", mode=settings.auth_mode, tokens=len(settings.api_token_digests))
            log.info("app.started", runtime=settings.runtime)
            try:
                yield
            finally:
                await _completed(container.shutdown_resources())
                log.info("app.stopped")
        finally:
            container.unwire()

    # Outermost first. Refusals (400, 403, 401, body deadline) still get a request id, a log
    # line and a count; framing, host, origin and token are checked before anything reads a
    # body or changes a thing, and a CORS preflight (which carries no token) is answered
    # before the token is asked for.
    middleware = [
        Middleware(RequestIdMiddleware),
        Middleware(HttpMetricsMiddleware, metrics=container.metrics(), routes=routes),
        Middleware(AmbiguousFramingMiddleware),
        Middleware(BrowserGuardMiddleware, hosts=settings.host_names(),
                   origins=settings.origins()),
    ]
    if settings.origins():
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=sorted(settings.origins()), allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED_HEADERS,
        ))
    if settings.api_token_digests:
        middleware.append(Middleware(BearerTokenMiddleware, digests=settings.api_token_digests))
    middleware += [
        Middleware(InternalErrorMiddleware),
        Middleware(RequestBodyDeadlineMiddleware, timeout_s=settings.request_read_timeout_s),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # A path the routes do not know is a 404, never a redirect to a guess: `/sandboxes/x/`
    # (or an id like `--root=/`) would otherwise answer 307 with a Location built from the
    # client's own Host header.
    app.router.redirect_slashes = False
    return app


async def _completed(pending: Awaitable[Any] | None) -> None:
    # dependency-injector returns an awaitable only when some resource is asynchronous.
    if pending is not None:
        await pending
