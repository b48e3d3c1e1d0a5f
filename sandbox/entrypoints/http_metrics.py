"""Counts and times every HTTP answer by method, route template and status.

The route is the template (`/sandboxes/{sandbox_id}`), never the path a client sent, and an
unknown method is `other`: a client cannot grow the number of series without bound.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.adapters.prometheus_metrics import PrometheusMetrics

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
UNMATCHED = "unmatched"


class HttpMetricsMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: PrometheusMetrics, routes: Sequence[BaseRoute]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = [route for route in routes if isinstance(route, Route)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._template(scope)
        method = scope["method"] if scope["method"] in METHODS else "other"
        started = time.perf_counter()
        status = 500  # what the server answers if the app never starts a response

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            self.metrics.http_request(method, route, status, time.perf_counter() - started)

    def _template(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                # `{path:path}` as the OpenAPI document writes it.
                return re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        return UNMATCHED
