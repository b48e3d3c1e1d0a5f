"""`PrometheusMetrics`: the Metrics port with prometheus-client, plus the HTTP metrics and the
gauges read at scrape time. Each instance has its own registry, so that several apps in one
process (tests) never share or collide on series."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sandbox.domain.metrics import (
    CapacityLimit,
    EgressVerdict,
    ExecutionKind,
    LayerResult,
    Metrics,
    PoolMiss,
    Verdict,
)

# Seconds: from a 5 ms answer to a script that runs for its whole 5 minutes.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_EXECUTION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_CHECKPOINT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A warm sandbox takes from half a second (Bash) to seconds (Python importing pandas).
_REFILL_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 10, 30, 60)
_EGRESS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 900)


class PrometheusMetrics(Metrics):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._requests = Counter(
            "sandbox_http_requests", "HTTP requests answered",
            ["method", "route", "status"], registry=registry)
        self._request_seconds = Histogram(
            "sandbox_http_request_seconds", "Time to answer an HTTP request (a stream: to its end)",
            ["method", "route"], buckets=_HTTP_BUCKETS, registry=registry)
        self._executions = Counter(
            "sandbox_executions", "Executions that ran to an outcome",
            ["kind", "outcome"], registry=registry)
        self._execution_seconds = Histogram(
            "sandbox_execution_seconds", "Wall time of an execution in its sandbox",
            ["kind"], buckets=_EXECUTION_BUCKETS, registry=registry)
        self._sandboxes = Gauge(
            "sandbox_sandboxes", "Managed sandboxes by state", ["state"], registry=registry)
        self._suspend_seconds = Histogram(
            "sandbox_suspend_seconds", "Time to checkpoint a sandbox",
            buckets=_CHECKPOINT_BUCKETS, registry=registry)
        self._restore_seconds = Histogram(
            "sandbox_restore_seconds", "Time to restore a sandbox",
            buckets=_CHECKPOINT_BUCKETS, registry=registry)
        self._rejections = Counter(
            "sandbox_capacity_rejections", "Requests refused for want of capacity",
            ["limit"], registry=registry)
        self._layers = Counter(
            "sandbox_package_layer_requests", "Package layers asked for, by how they were had",
            ["result"], registry=registry)
        self._pool_hits = Counter(
            "sandbox_pool_hits", "Requests served by a warm sandbox", ["profile"],
            registry=registry)
        self._pool_misses = Counter(
            "sandbox_pool_misses", "Requests that found no warm sandbox and ran cold",
            ["reason"], registry=registry)
        self._pool_ready = Gauge(
            "sandbox_pool_ready", "Warm sandboxes ready now", ["profile"], registry=registry)
        self._pool_refill_seconds = Histogram(
            "sandbox_pool_refill_seconds", "Time to start one warm sandbox", ["profile"],
            buckets=_REFILL_BUCKETS, registry=registry)
        self._pool_refill_failures = Counter(
            "sandbox_pool_refill_failures", "Warm sandboxes that failed to start", ["profile"],
            registry=registry)
        self._egress_connections = Counter(
            "sandbox_egress_connections", "Egress proxy connections, by how they ended",
            ["verdict"], registry=registry)
        self._egress_bytes = Counter(
            "sandbox_egress_bytes", "Bytes relayed by the egress proxy (sent: out of sandboxes)",
            ["direction"], registry=registry)
        self._egress_seconds = Histogram(
            "sandbox_egress_connection_seconds", "How long egress connections lasted",
            buckets=_EGRESS_BUCKETS, registry=registry)
        self._capacity_executions = Gauge(
            "sandbox_capacity_executions", "Ephemeral executions holding a place now",
            registry=registry)
        self._capacity_calls = Gauge(
            "sandbox_capacity_calls", "Execs and file calls in running sandboxes now",
            registry=registry)
        self._capacity_memory = Gauge(
            "sandbox_capacity_memory_mb", "Memory limits (MiB) of the sandboxes running now",
            registry=registry)

    # The Metrics port ---------------------------------------------------------------------

    def execution_finished(self, kind: ExecutionKind, verdict: Verdict, seconds: float) -> None:
        self._executions.labels(kind=kind, outcome=verdict).inc()
        self._execution_seconds.labels(kind=kind).observe(seconds)

    def capacity_rejected(self, limit: CapacityLimit) -> None:
        self._rejections.labels(limit=limit).inc()

    def sandbox_suspended(self, seconds: float) -> None:
        self._suspend_seconds.observe(seconds)

    def sandbox_restored(self, seconds: float) -> None:
        self._restore_seconds.observe(seconds)

    def package_layer_requested(self, result: LayerResult) -> None:
        self._layers.labels(result=result).inc()

    def pool_hit(self, profile: str) -> None:
        self._pool_hits.labels(profile=profile).inc()

    def pool_missed(self, reason: PoolMiss) -> None:
        self._pool_misses.labels(reason=reason).inc()

    def pool_size(self, profile: str, ready: int) -> None:
        self._pool_ready.labels(profile=profile).set(ready)

    def pool_refilled(self, profile: str, seconds: float) -> None:
        self._pool_refill_seconds.labels(profile=profile).observe(seconds)

    def pool_refill_failed(self, profile: str) -> None:
        self._pool_refill_failures.labels(profile=profile).inc()

    def egress_connection(
        self, verdict: EgressVerdict, sent: int, received: int, seconds: float
    ) -> None:
        self._egress_connections.labels(verdict=verdict).inc()
        self._egress_bytes.labels(direction="sent").inc(sent)
        self._egress_bytes.labels(direction="received").inc(received)
        self._egress_seconds.observe(seconds)

    # The HTTP entrypoint's ---------------------------------------------------------------

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._requests.labels(method=method, route=route, status=str(status)).inc()
        self._request_seconds.labels(method=method, route=route).observe(seconds)

    def exposition(
        self, sandboxes: Mapping[str, int], executions: int, memory_mb: int, calls: int
    ) -> bytes:
        """The text format, with the gauges set from what is true now."""
        for state, count in sandboxes.items():
            self._sandboxes.labels(state=state).set(count)
        self._capacity_executions.set(executions)
        self._capacity_calls.set(calls)
        self._capacity_memory.set(memory_mb)
        return generate_latest(self.registry)
