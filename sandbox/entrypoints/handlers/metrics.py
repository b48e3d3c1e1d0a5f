"""GET /metrics: Prometheus's text format. Gauges are read from the store and the capacity
at scrape time, so they are never stale."""

from __future__ import annotations

from collections import Counter

from dependency_injector.wiring import Provide, inject
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from sandbox.adapters.prometheus_metrics import PrometheusMetrics
from sandbox.containers import Container
from sandbox.domain.lifecycle import reading
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import SandboxState
from sandbox.entrypoints.query import checked_query


@inject
async def serve_metrics(
    request: Request,
    metrics: PrometheusMetrics = Provide[Container.metrics],
    sandboxes: Sandboxes = Provide[Container.sandboxes],
) -> Response:
    checked_query(request.query_params, ())
    counted = Counter(sandbox.state.value for sandbox in await reading.list_sandboxes(sandboxes))
    # Every state, zero included, so a series does not vanish when its last sandbox leaves.
    by_state = {state.value: counted[state.value] for state in SandboxState}
    capacity = sandboxes.capacity
    body = metrics.exposition(by_state, capacity.executions, capacity.memory_mb, capacity.calls)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
