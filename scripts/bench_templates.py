"""Checkpoints in `make bench`: P4 (suspend and restore of a session holding 256 MiB, over
HTTP, against bare `runsc checkpoint` / `runsc restore` of a container holding the same, on the
same platform and with the same checkpoint flags), bare runsc's own options beside it (what
SANDBOX_CHECKPOINT_COMPRESSION chooses between), a start from a template, and a fork of 8: the
time to all 8 running and their host memory. Loopback only; every loop is bounded."""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from bench_pool import Figure, charged_mib, memory_kib, processes_of

from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.model import Language, Limits, Program, SandboxSpec
from sandbox.settings import Settings

GOAL_P4 = 1.15
FORK_COUNT = 8
MEMORY_MB = 1024
CALL_TIMEOUT_S = 300.0
READY_TIMEOUT_S = 120.0
SETTLE_S = 0.5
# After a checkpoint, before a restore under the same id: the old container's teardown.
TEARDOWN_S = 3.0
# Every page written with data deflate cannot shrink (a random 1 MiB block repeated far beyond
# its window): the image is as large as the memory is. `ready` once all of it is written.
HOLD = """\
import os, time
block = os.urandom(2**20)
data = bytearray(block * 256)
open("/tmp/ready", "w").close()
print("ready", flush=True)
while True:
    time.sleep(1)
"""
START_HOLDING = f"""\
import subprocess
subprocess.Popen(["python3", "-c", {HOLD!r}], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""


class TemplateBenchError(RuntimeError):
    pass


def p50_ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def timed(
    call: Callable[[], httpx.Response], status: int, what: str
) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer = call()
    took = time.perf_counter() - started
    if answer.status_code != status:
        raise TemplateBenchError(f"{what} answered {answer.status_code}: {answer.text[:300]}")
    return took, answer.json()


# The service, over HTTP ------------------------------------------------------------------


def holding_session(client: httpx.Client) -> str:
    """A session whose background process holds 256 MiB, once it holds them."""
    _, record = timed(lambda: client.post("/sandboxes", json={
        "language": "python", "memory_mb": MEMORY_MB, "idle_timeout": 86400}), 201,
        "POST /sandboxes")
    sandbox_id: str = record["sandbox_id"]
    timed(lambda: client.post(f"/sandboxes/{sandbox_id}/exec", json={
        "language": "python", "code": START_HOLDING}), 200, "the exec")
    deadline = time.monotonic() + READY_TIMEOUT_S
    while client.get(f"/sandboxes/{sandbox_id}/files//tmp/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise TemplateBenchError("the 256 MiB were not written in time")
        time.sleep(0.2)
    return sandbox_id


def service_rounds(
    client: httpx.Client, rounds: int
) -> tuple[list[float], list[float], float]:
    """Suspends and restores, each restore a while after its suspend (as a user comes back);
    and one restore right after its suspend, which waits for the old container's teardown
    (about 1.5 s for 256 MiB here, bare runsc included: it shows as running until then)."""
    sandbox_id = holding_session(client)
    suspend = lambda: client.post(f"/sandboxes/{sandbox_id}/suspend")  # noqa: E731
    restore = lambda: client.post(f"/sandboxes/{sandbox_id}/restore")  # noqa: E731
    suspends, restores = [], []
    try:
        for _ in range(rounds):
            time.sleep(SETTLE_S)
            suspends.append(timed(suspend, 200, "suspend")[0])
            time.sleep(TEARDOWN_S)
            restores.append(timed(restore, 200, "restore")[0])
        time.sleep(SETTLE_S)
        timed(suspend, 200, "suspend")
        right_after = timed(restore, 200, "restore")[0]
    finally:
        client.delete(f"/sandboxes/{sandbox_id}")
    return suspends, restores, right_after


def template_start(client: httpx.Client, rounds: int) -> list[float]:
    """POST /sandboxes from a template of the 256 MiB session, each copy deleted after."""
    source_id = holding_session(client)
    _, template = timed(lambda: client.post(f"/sandboxes/{source_id}/snapshot"), 201,
                        "snapshot")
    starts = []
    try:
        for _ in range(rounds):
            took, record = timed(lambda: client.post(
                "/sandboxes", json={"template": template["template_id"]}), 201,
                "a start from the template")
            starts.append(took)
            client.delete(f"/sandboxes/{record['sandbox_id']}")
    finally:
        client.delete(f"/sandboxes/{source_id}")
        client.delete(f"/templates/{template['template_id']}")
    return starts


def fork_figures(client: httpx.Client, cgroup_parent: str) -> list[Figure]:
    source_id = holding_session(client)
    forks: list[str] = []
    try:
        took, answer = timed(lambda: client.post(f"/sandboxes/{source_id}/fork",
                                                 json={"count": FORK_COUNT}), 201, "fork")
        forks = [record["sandbox_id"] for record in answer["sandboxes"]]
        time.sleep(SETTLE_S)
        charged = sum(charged_mib(fork, cgroup_parent) for fork in forks)
        pids = {pid for fork in forks for pid in processes_of(fork, cgroup_parent)}
        pss = sum(memory_kib(pid)[0] for pid in pids) / 1024
        source = charged_mib(source_id, cgroup_parent)
    finally:
        for sandbox_id in [source_id, *forks]:
            client.delete(f"/sandboxes/{sandbox_id}")
    return [
        Figure(f"fork of {FORK_COUNT} from a 256 MiB session",
               f"all {len(forks)} running in {took * 1000:.0f} ms"),
        Figure(f"host memory of the {FORK_COUNT} copies",
               f"{charged:.0f} MiB charged (PSS {pss:.0f}); the source: {source:.0f} MiB"),
    ]


# Bare runsc, on the sessions' platform ----------------------------------------------------


class Bare:
    """A container holding 256 MiB, started, checkpointed and restored by bare runsc."""

    def __init__(self, runtime: RunscSandboxRuntime, settings: Settings) -> None:
        self.runtime = runtime
        self.platform = settings.session_platform
        self.spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=holding_limits(settings))

    def runsc(self, *args: str, output: Path | None = None) -> float:
        """Time a runsc command. A detached one hands its stdio to the container, which
        holds it open: it gets the `output` file, never a pipe."""
        argv = self.runtime.command(*args, platform=self.platform)
        with (output or Path(os.devnull)).open("ab") as sink:
            started = time.perf_counter()
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                                  timeout=CALL_TIMEOUT_S, check=False)
            took = time.perf_counter() - started
        if done.returncode != 0:
            raise TemplateBenchError(f"runsc {args[0]} exited {done.returncode}")
        return took

    def start(self, output: Path) -> Path:
        bundle = self.runtime.write_bundle(
            self.spec, Program.script(Language.PYTHON, HOLD.encode()))
        with output.open("wb") as sink:
            subprocess.run(self.runtime.command("run", "--detach", "--bundle", str(bundle),
                                                self.spec.sandbox_id, platform=self.platform),
                           stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                           timeout=CALL_TIMEOUT_S, check=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while b"ready" not in output.read_bytes():
            if time.monotonic() > deadline:
                raise TemplateBenchError("bare: the 256 MiB were not written in time")
            time.sleep(0.2)
        return bundle

    def rounds(
        self, rounds: int, flags: tuple[str, ...], restore_flags: tuple[str, ...] = ()
    ) -> tuple[list[float], list[float]]:
        checkpoints, restores = [], []
        with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
            output = Path(tmp, "output")
            bundle = self.start(output)
            try:
                for n in range(rounds):
                    time.sleep(SETTLE_S)
                    image = Path(tmp, f"image-{n}")
                    image.mkdir(mode=0o700)
                    checkpoints.append(self.runsc("checkpoint", *flags, "--image-path",
                                                  str(image), self.spec.sandbox_id))
                    self.stopped_and_deleted()
                    restores.append(self.runsc("restore", "--detach", *restore_flags,
                                               "--image-path",
                                               str(image), "--bundle", str(bundle),
                                               self.spec.sandbox_id, output=output))
            finally:
                subprocess.run(self.runtime.command("delete", "--force", self.spec.sandbox_id),
                               capture_output=True, check=False)
                self.runtime.remove_bundle(self.spec.sandbox_id)
        return checkpoints, restores

    def stopped_and_deleted(self) -> None:
        """`runsc checkpoint` can return while the container still shows as running."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            done = subprocess.run(self.runtime.command("state", self.spec.sandbox_id),
                                  capture_output=True, text=True, check=False)
            if '"stopped"' in done.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.runsc("delete", "--force", self.spec.sandbox_id)


def holding_limits(settings: Settings) -> Limits:
    return dataclasses.replace(settings.default_limits(), memory_mb=MEMORY_MB)


# The figures ------------------------------------------------------------------------------


def p4_figures(client: httpx.Client, runtime: RunscSandboxRuntime, settings: Settings,
               rounds: int) -> list[Figure]:
    compression = f"--compression={settings.checkpoint_compression}"
    other = "flate-best-speed" if settings.checkpoint_compression == "none" else "none"
    bare = Bare(runtime, settings)
    bare_checkpoint, bare_restore = bare.rounds(rounds, (compression,))
    other_checkpoint, other_restore = Bare(runtime, settings).rounds(
        rounds, (f"--compression={other}",))
    # runsc's other options, beside the flags in use (measured to choose, not used yet).
    sparse_checkpoint, direct_restore = Bare(runtime, settings).rounds(
        rounds, (compression, "--exclude-committed-zero-pages"), ("--direct",))
    suspends, restores, right_after = service_rounds(client, rounds)
    suspend_ratio = p50_ms(suspends) / p50_ms(bare_checkpoint)
    restore_ratio = p50_ms(restores) / p50_ms(bare_restore)
    return [
        Figure("P4: suspend 256 MiB / bare checkpoint, p50",
               f"{p50_ms(suspends):.0f} ms / {p50_ms(bare_checkpoint):.0f} ms = "
               f"{suspend_ratio:.2f}x", f"<= {GOAL_P4}x", suspend_ratio <= GOAL_P4),
        Figure("P4: restore 256 MiB / bare restore, p50",
               f"{p50_ms(restores):.0f} ms / {p50_ms(bare_restore):.0f} ms = "
               f"{restore_ratio:.2f}x", f"<= {GOAL_P4}x", restore_ratio <= GOAL_P4),
        Figure("restore right after its suspend", f"{right_after * 1000:.0f} ms"),
        Figure(f"bare checkpoint, restore: {settings.checkpoint_compression} (used)",
               f"{p50_ms(bare_checkpoint):.0f} ms, {p50_ms(bare_restore):.0f} ms"),
        Figure(f"bare checkpoint, restore: {other}",
               f"{p50_ms(other_checkpoint):.0f} ms, {p50_ms(other_restore):.0f} ms"),
        Figure("bare, + zero pages excluded, restore --direct",
               f"{p50_ms(sparse_checkpoint):.0f} ms, {p50_ms(direct_restore):.0f} ms"),
    ]


def measure(client: httpx.Client, runtime: RunscSandboxRuntime, settings: Settings,
            cgroup_parent: str, rounds: int) -> list[Figure]:
    figures = p4_figures(client, runtime, settings, rounds)
    starts = template_start(client, rounds)
    figures.append(Figure("start from a 256 MiB template, p50", f"{p50_ms(starts):.0f} ms"))
    figures += fork_figures(client, cgroup_parent)
    return figures

