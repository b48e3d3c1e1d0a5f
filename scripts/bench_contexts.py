"""Benchmark of code contexts, for `scripts/bench.py`: over HTTP, the client in this process.

- the start of a context (an IPython kernel the agent starts in a running session);
- the round trip of a cell `1+1` (POST .../run to its answer), beside a session exec of the
  Python script `print(1+1)` (a fresh interpreter forked from the session's zygote);
- a plot cell (`plt.plot` of three points, its figure sent back as a PNG), pyplot imported;
- suspend and restore of a session whose context has numpy, pandas and matplotlib imported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

STARTS = 3
SUSPENDS = 3
PLOT = "plt.plot([1, 3, 2])"


class ContextBenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Timing:
    name: str
    seconds: list[float]

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.seconds)
        return 1000 * ordered[min(len(ordered) - 1, round((len(ordered) - 1) * fraction))]


def _ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    if response.status_code != status:
        raise ContextBenchError(f"{response.request.method} {response.request.url.path} "
                                f"answered {response.status_code}: {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


def _timed(call: Callable[[], object], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def context_timings(client: httpx.Client, runs: int) -> list[Timing]:
    sandbox_id = _ok(client.post("/sandboxes", json={"memory_mb": 1024}), 201)["sandbox_id"]
    base = f"/sandboxes/{sandbox_id}"
    try:
        return _measured(client, base, runs)
    finally:
        client.delete(base)


def _measured(client: httpx.Client, base: str, runs: int) -> list[Timing]:
    def start() -> str:
        context_id: str = _ok(client.post(f"{base}/contexts", json={}), 201)["context_id"]
        return context_id

    starts = []
    for _ in range(STARTS):
        started = time.perf_counter()
        context_id = start()
        starts.append(time.perf_counter() - started)
        _ok(client.delete(f"{base}/contexts/{context_id}"))
    cell_url = f"{base}/contexts/{start()}/run"

    def cell(code: str, expected: str | None = None) -> None:
        answer = _ok(client.post(cell_url, json={"code": code}))
        if answer["error"] is not None or (expected is not None and
                                           answer["results"][0]["text/plain"] != expected):
            raise ContextBenchError(f"the cell {code!r} answered {str(answer)[:300]}")

    def plot() -> None:
        answer = _ok(client.post(cell_url, json={"code": PLOT}))
        if not any("image/png" in result for result in answer["results"]):
            raise ContextBenchError(f"the plot cell sent no figure: {str(answer)[:300]}")

    def exec_python() -> None:
        answer = _ok(client.post(f"{base}/exec", json={"language": "python",
                                                        "code": "print(1+1)"}))
        if answer["stdout"] != "2\n":
            raise ContextBenchError(f"the exec answered {str(answer)[:300]}")

    def suspend_and_restore() -> None:
        _ok(client.post(f"{base}/suspend"))
        _ok(client.post(f"{base}/restore"))
        cell("1+1", "2")

    cell("1+1", "2")
    exec_python()
    imports = _timed(lambda: cell("import numpy, pandas\nimport matplotlib.pyplot as plt"), 1)
    return [
        Timing("context start", starts),
        Timing("cell 1+1", _timed(lambda: cell("1+1", "2"), runs)),
        Timing("session exec of print(1+1)", _timed(exec_python, runs)),
        Timing("first import of numpy, pandas, pyplot", imports),
        Timing(f"plot cell {PLOT} (PNG back)", _timed(plot, runs)),
        Timing("suspend + restore + cell, all imported", _timed(suspend_and_restore, SUSPENDS)),
    ]


def report(timings: list[Timing]) -> None:
    print()
    print("code contexts (over HTTP; ms):")
    print(f"  {'case':<42}{'p50':>8}{'p95':>8}{'runs':>6}")
    for timing in timings:
        print(f"  {timing.name:<42}{timing.percentile_ms(0.5):>8.0f}"
              f"{timing.percentile_ms(0.95):>8.0f}{len(timing.seconds):>6}")
