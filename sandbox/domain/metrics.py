"""The port through which the use cases report what monitoring counts. The domain knows no
metrics library; `NoMetrics` is the default wherever nobody listens."""

from __future__ import annotations

import abc
from typing import Literal

from sandbox.domain.model import Outcome

ExecutionKind = Literal["execute", "exec", "cell"]
Verdict = Literal["ok", "failed", "timed_out", "oom"]
CapacityLimit = Literal["executions", "calls", "memory", "running_sandboxes", "package_builds"]
LayerResult = Literal["hit", "built", "failed"]
# Why a request found no warm sandbox: pools off, the pool not running (starting, stopping),
# no profile fits the request, or its profile has none ready.
PoolMiss = Literal["disabled", "stopped", "no_profile", "empty"]
# How an egress connection ended: relayed to its end; refused by the allow-list, by the
# address it resolves to, or by a cap; failed upstream (no such name, no answer); a request
# that is not HTTP; or cut part-way (idle, total time, bytes, suspend or delete, an answer
# that is not HTTP); or the proxy itself failed (a bug, logged with its traceback).
EgressVerdict = Literal[
    "relayed", "refused_policy", "refused_address", "refused_limit", "failed_upstream",
    "bad_request", "cut_idle", "cut_timeout", "cut_bytes", "cut_interrupted", "cut_upstream",
    "failed_proxy",
]


class Metrics(abc.ABC):
    """Contract: every method is cheap, never blocks and never raises."""

    @abc.abstractmethod
    def execution_finished(self, kind: ExecutionKind, verdict: Verdict, seconds: float) -> None:
        ...

    @abc.abstractmethod
    def capacity_rejected(self, limit: CapacityLimit) -> None: ...

    @abc.abstractmethod
    def sandbox_suspended(self, seconds: float) -> None: ...

    @abc.abstractmethod
    def sandbox_restored(self, seconds: float) -> None: ...

    @abc.abstractmethod
    def package_layer_requested(self, result: LayerResult) -> None: ...

    # Warm pools, per profile (`python`, `python@1024`, ...).

    @abc.abstractmethod
    def pool_hit(self, profile: str) -> None: ...

    @abc.abstractmethod
    def pool_missed(self, reason: PoolMiss) -> None: ...

    @abc.abstractmethod
    def pool_size(self, profile: str, ready: int) -> None: ...

    @abc.abstractmethod
    def pool_refilled(self, profile: str, seconds: float) -> None: ...

    @abc.abstractmethod
    def pool_refill_failed(self, profile: str) -> None: ...

    @abc.abstractmethod
    def egress_connection(
        self, verdict: EgressVerdict, sent: int, received: int, seconds: float
    ) -> None: ...


class NoMetrics(Metrics):
    def execution_finished(self, kind: ExecutionKind, verdict: Verdict, seconds: float) -> None:
        return None

    def capacity_rejected(self, limit: CapacityLimit) -> None:
        return None

    def sandbox_suspended(self, seconds: float) -> None:
        return None

    def sandbox_restored(self, seconds: float) -> None:
        return None

    def package_layer_requested(self, result: LayerResult) -> None:
        return None

    def pool_hit(self, profile: str) -> None:
        return None

    def pool_missed(self, reason: PoolMiss) -> None:
        return None

    def pool_size(self, profile: str, ready: int) -> None:
        return None

    def pool_refilled(self, profile: str, seconds: float) -> None:
        return None

    def pool_refill_failed(self, profile: str) -> None:
        return None

    def egress_connection(
        self, verdict: EgressVerdict, sent: int, received: int, seconds: float
    ) -> None:
        return None


def verdict_of(outcome: Outcome) -> Verdict:
    """How an execution ended, from the supervisor's own verdicts (never from its output)."""
    if outcome.timed_out:
        return "timed_out"
    if outcome.oom_killed:
        return "oom"
    return "ok" if outcome.exit_code == 0 else "failed"
