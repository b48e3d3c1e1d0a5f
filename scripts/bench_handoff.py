"""P9 in `make bench`: the handoff of a running session holding 64 MiB. Two server instances
share a throwaway PostgreSQL and one checkpoint folder; every exec alternates between them, so
each one reaches the instance that does not own the session, which asks the owner for it (the
owner checkpoints it, publishes the image, records it, releases its lease) and restores it
before running the exec. Against it, in the same run: `runsc checkpoint` then `runsc restore`
of a session holding the same, through the runtime adapter alone (no database, no image store,
no HTTP).

Then the stop of an instance as Cloud Run does it (SIGTERM, 10 s of grace): how many sessions
it checkpoints to the shared folder in that time, idle ones limited to 64 MiB and ones holding
64 MiB. Those it could not save still run ownerless when it exits; the same instance started
again on its state folder takes them back and saves them, then all are deleted. Loopback only;
every loop is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import psycopg
from bench_pool import Figure, p50_ms
from pg_cluster import throwaway_cluster

from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.adapters.runsc.warm import Nowhere
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.model import Language, Program, SandboxSpec
from sandbox.domain.output import OutputCapture
from sandbox.settings import Settings

HELD_MIB = 64
# Room for the 64 MiB held in the sandbox's memory (its /tmp) and the sentry's own.
SESSION_MEMORY_MB = 256
FILL = f"head -c {HELD_MIB}M /dev/urandom > /tmp/held && echo held"
CALL_TIMEOUT_S = 120.0
DATABASE = "bench"
# Cloud Run's grace between SIGTERM and SIGKILL.
GRACE_S = 10
STOP_BOUND_S = 120.0
CREATORS = 4
# (sessions, memory limit in MiB, what each holds): more than fit in the grace period here.
STOP_CASES = ((80, 64, ""), (24, SESSION_MEMORY_MB, FILL))

ServerProcess = Callable[..., AbstractContextManager[tuple[str, "subprocess.Popen[bytes]"]]]


class HandoffBenchError(RuntimeError):
    pass


@contextlib.contextmanager
def shared_database() -> Iterator[str]:
    with throwaway_cluster() as cluster:
        with psycopg.connect(cluster.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {DATABASE} TEMPLATE template0")
        yield cluster.url(DATABASE)


def instance_env(name: str, database_url: str, checkpoints: Path, cgroup_parent: str
                 ) -> dict[str, str]:
    return {"SANDBOX_DATABASE_URL": database_url, "SANDBOX_CHECKPOINT_DIR": str(checkpoints),
            "SANDBOX_INSTANCE_ID": name, "SANDBOX_CGROUP_PARENT": f"{cgroup_parent}-{name}"}


def exec_bash(client: httpx.Client, sandbox_id: str, code: str) -> tuple[float, str]:
    started = time.perf_counter()
    answer = client.post(f"/sandboxes/{sandbox_id}/exec",
                         json={"language": "bash", "code": code})
    seconds = time.perf_counter() - started
    if answer.status_code != 200 or answer.json()["exit_code"] != 0:
        raise HandoffBenchError(f"exec: {answer.status_code} {answer.text[:300]}")
    return seconds, str(answer.json()["stdout"])


def handoff_latencies(a: httpx.Client, b: httpx.Client, rounds: int) -> tuple[list[float],
                                                                              list[float]]:
    """(execs that needed a handoff, execs on the owner) of one session holding 64 MiB."""
    answer = a.post("/sandboxes", json={"language": "python", "memory_mb": SESSION_MEMORY_MB,
                                        "idle_timeout": 86400})
    if answer.status_code != 201:
        raise HandoffBenchError(f"create: {answer.status_code} {answer.text[:300]}")
    sandbox_id = answer.json()["sandbox_id"]
    try:
        exec_bash(a, sandbox_id, FILL)
        handoffs, owner = [], []
        for round_ in range(rounds):
            here = (b, a)[round_ % 2]  # the other instance than the last call's
            seconds, held = exec_bash(here, sandbox_id, "stat -c %s /tmp/held")
            if int(held) != HELD_MIB * 1024 * 1024:
                raise HandoffBenchError(f"the session holds {held.strip()} bytes after a handoff")
            handoffs.append(seconds)
            owner.append(exec_bash(here, sandbox_id, "true")[0])
        return handoffs, owner
    finally:
        a.delete(f"/sandboxes/{sandbox_id}")


async def bare_latencies(runtime: RunscSandboxRuntime, settings: Settings, rounds: int
                         ) -> list[float]:
    """Checkpoint then restore of a session holding 64 MiB, through the runtime adapter."""
    limits = dataclasses.replace(settings.default_limits(), memory_mb=SESSION_MEMORY_MB)
    spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=limits)
    await runtime.launch(spec, Program(language=None), Nowhere())
    try:
        capture = OutputCapture(1024)
        outcome = await runtime.exec(spec.sandbox_id, Program(Language.BASH, FILL.encode()),
                                     capture, b"", CALL_TIMEOUT_S)
        if outcome.exit_code != 0:
            raise HandoffBenchError(f"filling the bare session failed: {outcome}")
        latencies = []
        for _ in range(rounds):
            started = time.perf_counter()
            image = await runtime.checkpoint(spec.sandbox_id)
            await runtime.restore(spec, image, Nowhere())
            latencies.append(time.perf_counter() - started)
            await runtime.discard_checkpoint(image)
        outcome = await runtime.exec(spec.sandbox_id, Program(Language.BASH, b"test -s /tmp/held"),
                                     OutputCapture(1024), b"", CALL_TIMEOUT_S)
        if outcome.exit_code != 0:
            raise HandoffBenchError(f"the bare session lost what it held: {outcome}")
        return latencies
    finally:
        await runtime.destroy(spec.sandbox_id)


def created(client: httpx.Client, sessions: int, memory_mb: int, fill: str) -> list[str]:
    def one(_: int) -> str:
        answer = client.post("/sandboxes", json={"language": "python", "memory_mb": memory_mb,
                                                 "idle_timeout": 86400})
        if answer.status_code != 201:
            raise HandoffBenchError(f"create: {answer.status_code} {answer.text[:300]}")
        sandbox_id = str(answer.json()["sandbox_id"])
        if fill:
            exec_bash(client, sandbox_id, fill)
        return sandbox_id

    with ThreadPoolExecutor(CREATORS) as pool:
        return list(pool.map(one, range(sessions)))


def stop_figure(
    start: Callable[[dict[str, str]], AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]],
    reader: httpx.Client, sessions: int, memory_mb: int, fill: str,
) -> Figure:
    """SIGTERM to an instance running `sessions` sessions, with GRACE_S of grace."""
    with start({"SANDBOX_SHUTDOWN_GRACE_S": str(GRACE_S),
                "SANDBOX_MAX_RUNNING_SANDBOXES": str(sessions + 8)}) as (url, process), \
            httpx.Client(base_url=url, timeout=CALL_TIMEOUT_S) as client:
        ids = created(client, sessions, memory_mb, fill)
        started = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        code = process.wait(STOP_BOUND_S)
        took_s = time.perf_counter() - started
    states = {record["sandbox_id"]: record["reason_code"]
              for record in reader.get("/list").json()["sandboxes"]}
    saved = sum(states.get(sandbox_id) == "server_stopped" for sandbox_id in ids)
    # The unsaved ones run on, ownerless: the instance started again takes them back (and
    # saves them when it stops, with all the time it needs).
    with start({"SANDBOX_SHUTDOWN_GRACE_S": str(STOP_BOUND_S)}):
        pass
    for sandbox_id in ids:
        reader.delete(f"/sandboxes/{sandbox_id}")
    what = f"{HELD_MIB} MiB held" if fill else "idle"
    return Figure(f"SIGTERM: {sessions} sessions, {memory_mb} MiB, {what}",
                  f"{saved} saved in {GRACE_S} s of grace; exit {code} after {took_s:.1f} s")


def handoff_figures(
    tmp: Path, server_process: ServerProcess, wheels: Path, runtime: RunscSandboxRuntime,
    settings: Settings, cgroup_parent: str, rounds: int,
) -> list[Figure]:
    checkpoints = tmp / "shared-checkpoints"
    checkpoints.mkdir(mode=0o700, parents=True)
    with shared_database() as url:
        def start(name: str, extra: dict[str, str] | None = None
                  ) -> AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]:
            return server_process(tmp / name, tmp / f"{name}.log", wheels, extra={
                **instance_env(name, url, checkpoints, cgroup_parent), **(extra or {})})

        with start("a") as (a_url, _), start("b") as (b_url, _), \
                httpx.Client(base_url=a_url, timeout=CALL_TIMEOUT_S) as a, \
                httpx.Client(base_url=b_url, timeout=CALL_TIMEOUT_S) as b:
            handoffs, owner = handoff_latencies(a, b, rounds)
            stops = [stop_figure(lambda extra: start("c", extra), b, *case)
                     for case in STOP_CASES]
    bare = asyncio.run(bare_latencies(runtime, settings, rounds))
    ratio = p50_ms(handoffs) / p50_ms(bare)
    return [
        Figure(f"P9: exec on the non-owner, {HELD_MIB} MiB held",
               f"p50 {p50_ms(handoffs):.0f} ms, max {1000 * max(handoffs):.0f} ms "
               f"({rounds} handoffs)"),
        Figure("    the same exec on the owner", f"p50 {p50_ms(owner):.0f} ms"),
        Figure("    bare runsc checkpoint + restore", f"p50 {p50_ms(bare):.0f} ms, "
               f"max {1000 * max(bare):.0f} ms; handoff / bare: {ratio:.2f}x"),
        *stops,
    ]
