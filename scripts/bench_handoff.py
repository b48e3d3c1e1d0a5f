"""P9 in `make bench`: the handoff of a running session holding 64 MiB. Two server instances
share a throwaway PostgreSQL and one checkpoint folder; every exec alternates between them, so
each one reaches the instance that does not own the session, which asks the owner for it (the
owner checkpoints it, publishes the image, records it, releases its lease) and restores it
before running the exec. Against it, in the same run: `runsc checkpoint` then `runsc restore`
of a session holding the same, through the runtime adapter alone (no database, no image store,
no HTTP). Loopback only; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
        return latencies
    finally:
        await runtime.destroy(spec.sandbox_id)


def handoff_figures(
    tmp: Path, running_server: Callable[..., Any], wheels: Path, runtime: RunscSandboxRuntime,
    settings: Settings, cgroup_parent: str, rounds: int,
) -> list[Figure]:
    checkpoints = tmp / "shared-checkpoints"
    checkpoints.mkdir(mode=0o700, parents=True)
    with shared_database() as url, \
            running_server(tmp / "a", tmp / "a.log", wheels,
                           extra=instance_env("a", url, checkpoints, cgroup_parent)) as a_url, \
            running_server(tmp / "b", tmp / "b.log", wheels,
                           extra=instance_env("b", url, checkpoints, cgroup_parent)) as b_url, \
            httpx.Client(base_url=a_url, timeout=CALL_TIMEOUT_S) as a, \
            httpx.Client(base_url=b_url, timeout=CALL_TIMEOUT_S) as b:
        handoffs, owner = handoff_latencies(a, b, rounds)
    bare = asyncio.run(bare_latencies(runtime, settings, rounds))
    ratio = p50_ms(handoffs) / p50_ms(bare)
    return [
        Figure(f"P9: exec on the non-owner, {HELD_MIB} MiB held",
               f"p50 {p50_ms(handoffs):.0f} ms, max {1000 * max(handoffs):.0f} ms "
               f"({rounds} handoffs)"),
        Figure("    the same exec on the owner", f"p50 {p50_ms(owner):.0f} ms"),
        Figure("    bare runsc checkpoint + restore", f"p50 {p50_ms(bare):.0f} ms, "
               f"max {1000 * max(bare):.0f} ms; handoff / bare: {ratio:.2f}x"),
    ]
