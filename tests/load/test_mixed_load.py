"""Many clients at once against a real server: 16 threads, each making a bounded number of
calls (bounded in time too) from a mix of scripts, detached runs, sessions, execs, suspends,
restores and deletes of its own sandboxes. Every answer is a 2xx or a 4xx in the error shape,
or a 429 or 503 that says when to retry: never another 5xx, never a connection error. The
latency of each kind of call is printed and written to a JSON file; afterwards, nothing is
left on the host."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration.server import records, serving
from integration.support import leftovers

from sandbox.settings import Settings

pytestmark = pytest.mark.runsc

THREADS = 16
CALLS_PER_THREAD = 15
# No call starts after this; with the bound of one call below, the test ends within ~3 min.
CALLS_BOUND_S = 100.0
CALL_BOUND_S = 60.0
# Each thread keeps at most this many sandboxes of its own (16 x 2 = the 32 a server runs).
OWN_SANDBOXES = 2

PYTHON = b"print(sum(range(1000)))\n"
BASH = b"echo hi\n"
# Runs until deleted: long enough never to end (and race a suspend) during the test.
LONG_RUNNING = b'import time\nprint("up", flush=True)\ntime.sleep(600)\n'


@dataclass
class Answer:
    call: str
    status: int | None  # None: no answer at all
    seconds: float
    problem: str | None


@dataclass
class Client:
    """One thread's client and the sandboxes it made, by state."""

    http: httpx.Client
    chooser: random.Random
    deadline: float
    answers: list[Answer] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    suspended: list[str] = field(default_factory=list)

    def work(self) -> None:
        for _ in range(CALLS_PER_THREAD):
            if time.monotonic() > self.deadline:
                return
            calls = self.possible_calls()
            weights = [weight for _, weight in calls.values()]
            name = self.chooser.choices(list(calls), weights)[0]
            calls[name][0]()

    def possible_calls(self) -> dict[str, tuple[Callable[[], None], int]]:
        calls: dict[str, tuple[Callable[[], None], int]] = {
            "execute python": (self.execute_python, 3),
            "execute bash": (self.execute_bash, 2),
        }
        if len(self.running) + len(self.suspended) < OWN_SANDBOXES:
            calls["detach"] = (self.detach, 1)
            calls["create session"] = (self.create_session, 1)
        if self.sessions & set(self.running):
            calls["exec"] = (self.exec, 3)
        if self.running:
            calls["suspend"] = (self.suspend, 2)
        if self.suspended:
            calls["restore"] = (self.restore, 2)
        if self.running or self.suspended:
            calls["delete"] = (self.delete, 1)
        return calls

    def call(self, name: str, method: str, url: str, expect: int,
             check: Callable[[dict[str, Any]], bool] = lambda body: True,
             **kwargs: Any) -> dict[str, Any] | None:
        """Make the call and record how it went; its body when it answered `expect`."""
        started = time.perf_counter()
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as error:
            seconds = time.perf_counter() - started
            self.answers.append(Answer(name, None, seconds, f"{type(error).__name__}: {error}"))
            return None
        seconds = time.perf_counter() - started
        problem = problem_of(response)
        body = response.json() if response.status_code == expect else None
        if body is not None and not check(body):
            problem = f"{expect} with an unexpected body: {response.text[:200]}"
        self.answers.append(Answer(name, response.status_code, seconds, problem))
        return body

    def execute_python(self) -> None:
        self.call("execute python", "POST", "/execute?language=python", 200,
                  lambda body: body["stdout"] == "499500\n", content=PYTHON)

    def execute_bash(self) -> None:
        self.call("execute bash", "POST", "/execute?language=bash", 200,
                  lambda body: body["stdout"] == "hi\n", content=BASH)

    def detach(self) -> None:
        body = self.call("detach", "POST", "/execute?language=python&detach=true&timeout=300",
                         202, content=LONG_RUNNING)
        if body is not None:
            self.running.append(body["sandbox_id"])

    def create_session(self) -> None:
        body = self.call("create session", "POST", "/sandboxes", 201, json={})
        if body is not None:
            self.running.append(body["sandbox_id"])
            self.sessions.add(body["sandbox_id"])

    def exec(self) -> None:
        sandbox_id = self.chooser.choice(sorted(self.sessions & set(self.running)))
        self.call("exec", "POST", f"/sandboxes/{sandbox_id}/exec", 200,
                  lambda body: body["stdout"] == "42\n",
                  json={"language": "python", "code": "print(6 * 7)"})

    def suspend(self) -> None:
        sandbox_id = self.chooser.choice(self.running)
        if self.call("suspend", "POST", f"/sandboxes/{sandbox_id}/suspend", 200,
                     lambda body: body["state"] == "suspended") is not None:
            self.running.remove(sandbox_id)
            self.suspended.append(sandbox_id)

    def restore(self) -> None:
        sandbox_id = self.chooser.choice(self.suspended)
        if self.call("restore", "POST", f"/sandboxes/{sandbox_id}/restore", 200,
                     lambda body: body["state"] == "running") is not None:
            self.suspended.remove(sandbox_id)
            self.running.append(sandbox_id)

    def delete(self) -> None:
        sandbox_id = self.chooser.choice(self.running + self.suspended)
        if self.call("delete", "DELETE", f"/sandboxes/{sandbox_id}", 200) is not None:
            for held in (self.running, self.suspended):
                if sandbox_id in held:
                    held.remove(sandbox_id)


def problem_of(response: httpx.Response) -> str | None:
    status = response.status_code
    if status in (429, 503) and "Retry-After" not in response.headers:
        return f"{status} without Retry-After: {response.text[:200]}"
    if status >= 500 and status != 503:
        return f"{status}: {response.text[:200]}"
    if status >= 400:
        error = response.json().get("error", {})
        if set(error) != {"code", "message"}:
            return f"{status} not in the error shape: {response.text[:200]}"
    return None


def percentile(sorted_values: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least `share` of the values at or below it."""
    return sorted_values[max(math.ceil(share * len(sorted_values)) - 1, 0)]


def figures(answers: list[Answer], seconds: float) -> dict[str, Any]:
    by_call: dict[str, list[Answer]] = {}
    for answer in answers:
        by_call.setdefault(answer.call, []).append(answer)
    calls = {}
    for name, group in sorted(by_call.items()):
        latencies = sorted(answer.seconds * 1000 for answer in group)
        calls[name] = {
            "count": len(group),
            "statuses": dict(Counter(str(answer.status) for answer in group)),
            "p50_ms": round(percentile(latencies, 0.50)),
            "p95_ms": round(percentile(latencies, 0.95)),
            "max_ms": round(latencies[-1]),
        }
    return {"threads": THREADS, "calls": len(answers), "seconds": round(seconds, 1),
            "calls_per_second": round(len(answers) / seconds, 2), "by_call": calls}


def test_a_mixed_load_gets_only_sound_answers_and_leaves_nothing_behind(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(settings, tmp_path / "server.log", timeout_s=CALL_BOUND_S) as server:
        started = time.monotonic()
        deadline = started + CALLS_BOUND_S
        clients = [Client(httpx.Client(base_url=server.client.base_url, timeout=CALL_BOUND_S),
                          random.Random(seed), deadline) for seed in range(THREADS)]
        threads = [threading.Thread(target=client.work) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0) + CALL_BOUND_S + 10)
        hung = sum(thread.is_alive() for thread in threads)
        took = time.monotonic() - started
        deleted = [server.client.delete(f"/sandboxes/{sandbox_id}").status_code
                   for client in clients for sandbox_id in client.running + client.suspended]
        listed = records(server.client)
        for client in clients:
            client.http.close()

    answers = [answer for client in clients for answer in client.answers]
    report = figures(answers, took)
    (tmp_path / "load-figures.json").write_text(json.dumps(report, indent=2))
    with capsys.disabled():
        print(f"\nload figures ({tmp_path / 'load-figures.json'}):\n"
              f"{(tmp_path / 'load-figures.json').read_text()}")
    assert hung == 0
    assert [f"{answer.call}: {answer.problem}" for answer in answers if answer.problem] == []
    assert len(answers) > THREADS * CALLS_PER_THREAD // 2  # the load did happen
    assert set(deleted) <= {200}
    assert listed == {}
    assert leftovers(settings) == []
