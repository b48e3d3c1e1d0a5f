"""Benchmark of the warm pools, for `scripts/bench.py`.

- P2: warm `POST /execute` of a Python hello world (p50, over HTTP, the client in this
  process) against `chroot ROOTFS python3 -c 'print("hello")'` started as a subprocess.
- P8: warm pandas script (import, a 3-row DataFrame, `describe()`) against the same script
  run natively in the rootfs (chroot).
- What an idle pooled sandbox costs the host: memory (PSS and RSS of its host processes,
  found by its id on their command lines) and CPU (their user+system time over a window),
  for plain Python, Python with pandas imported, and Bash.
- Refill rate: the Python pool emptied at once, then the time until it is full again.

Each timed warm call waits first (untimed) until the pool is full again, so it is a hit on
an otherwise quiet pool; the hit counter proves it was one.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

HELLO = b'print("hello")\n'
PANDAS = b"""\
import pandas as pd
frame = pd.DataFrame({"a": [1, 2, 3], "b": [4.0, 5.5, 6.0]})
print(frame.describe())
"""
GOAL_P2 = 1.5
GOAL_P8 = 0.35
IDLE_WINDOW_S = 10.0
FILL_TIMEOUT_S = 180.0
CALL_TIMEOUT_S = 60.0
# The native runs get a sandbox's environment (oci._BASE_ENV), and write no bytecode: the
# rootfs is shared and must stay as it is (it holds the compiled files already).
NATIVE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME": "/", "LANG": "C.UTF-8", "MPLBACKEND": "Agg",
              "PYTHONDONTWRITEBYTECODE": "1"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class PoolBenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Figure:
    name: str
    value: str
    goal: str = ""
    met: bool | None = None

    def line(self) -> str:
        verdict = "" if self.met is None else ("met" if self.met else "NOT MET")
        goal = f"goal {self.goal}: {verdict}" if self.goal else "(no goal)"
        return f"  {self.name:<46}{self.value:<56}{goal}"


def p50_ms(latencies: list[float]) -> float:
    return 1000 * statistics.median(latencies)


# The pool, seen through /metrics ---------------------------------------------------------


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


def wait_full(client: httpx.Client, profile: str, size: int) -> float:
    """Seconds until the profile has `size` sandboxes ready."""
    started = time.perf_counter()
    deadline = started + FILL_TIMEOUT_S
    while metric(client, "sandbox_pool_ready", profile=profile) < size:
        if time.perf_counter() > deadline:
            raise PoolBenchError(f"pool {profile} not full within {FILL_TIMEOUT_S:.0f} s")
        time.sleep(0.02)
    return time.perf_counter() - started


# Timed work ---------------------------------------------------------------------------------


def warm_calls(client: httpx.Client, source: bytes, profile: str, size: int, runs: int,
               expected: Callable[[str], bool]) -> list[float]:
    """`runs` warm calls, each on a full pool; raises unless every one was a hit."""
    hits_before = metric(client, "sandbox_pool_hits_total", profile=profile)
    latencies = []
    for _ in range(runs):
        wait_full(client, profile, size)
        started = time.perf_counter()
        response = client.post("/execute", params={"language": "python"}, content=source)
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200 or not expected(response.json().get("stdout", "")):
            raise PoolBenchError(f"POST /execute answered {response.status_code}: "
                                 f"{response.text[:300]}")
    hits = metric(client, "sandbox_pool_hits_total", profile=profile) - hits_before
    if hits != runs:
        raise PoolBenchError(f"{runs} calls but {hits:.0f} pool hits")
    return latencies


def native_calls(rootfs: Path, source: bytes, runs: int,
                 expected: Callable[[str], bool]) -> list[float]:
    """`chroot ROOTFS python3 -c SOURCE`, timed from the spawn to the exit."""
    argv = ["chroot", str(rootfs), "python3", "-c", source.decode()]
    latencies = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(argv, env=NATIVE_ENV, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=CALL_TIMEOUT_S, check=False)
        latencies.append(time.perf_counter() - started)
        if done.returncode != 0 or not expected(done.stdout.decode()):
            raise PoolBenchError(f"native run exited {done.returncode}: {done.stderr[:300]!r}")
    return latencies


def interleaved(warm: Callable[[int], list[float]], native: Callable[[int], list[float]],
                runs: int) -> tuple[list[float], list[float]]:
    """One of each in turn, so that drift on a shared machine hits both alike."""
    warm_latencies: list[float] = []
    native_latencies: list[float] = []
    for _ in range(runs):
        warm_latencies += warm(1)
        native_latencies += native(1)
    return warm_latencies, native_latencies


def ratio_figure(name: str, warm: list[float], native: list[float], goal: float) -> Figure:
    ratio = p50_ms(warm) / p50_ms(native)
    return Figure(name, f"{p50_ms(warm):.0f} ms / {p50_ms(native):.0f} ms = {ratio:.2f}x",
                  f"<= {goal}x", ratio <= goal)


def latency_figures(client: httpx.Client, rootfs: Path, runs: int) -> list[Figure]:
    hello = lambda stdout: stdout == "hello\n"  # noqa: E731
    described = lambda stdout: "mean" in stdout  # noqa: E731
    native_calls(rootfs, PANDAS, 1, described)  # the rootfs's files in the page cache
    p2 = interleaved(lambda n: warm_calls(client, HELLO, "python", 2, n, hello),
                     lambda n: native_calls(rootfs, HELLO, n, hello), runs)
    p8 = interleaved(lambda n: warm_calls(client, PANDAS, "python", 2, n, described),
                     lambda n: native_calls(rootfs, PANDAS, n, described), runs)
    return [
        ratio_figure("P2 warm hello world / native (p50)", *p2, GOAL_P2),
        ratio_figure("P8 warm pandas script / native (p50)", *p8, GOAL_P8),
    ]


# Idle cost ----------------------------------------------------------------------------------


def pooled_ids(state_dir: Path) -> list[str]:
    """While no request runs, every bundle of the server is a pooled sandbox's."""
    return sorted(entry.name for entry in (state_dir / "bundles").iterdir())


def processes_of(sandbox_id: str, cgroup_parent: str) -> set[int]:
    """Host processes of a sandbox: those in its cgroup (its sentry, the systrap stubs that
    run its processes, its gofer) and its `runsc run`, which names it on its command line."""
    found: set[int] = set()
    for procs in (*CGROUP_ROOT.glob(f"*/{cgroup_parent}/{sandbox_id}/sandbox/cgroup.procs"),
                  CGROUP_ROOT / cgroup_parent / sandbox_id / "sandbox" / "cgroup.procs"):
        with contextlib.suppress(OSError):
            found.update(int(pid) for pid in procs.read_text().split())
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if sandbox_id.encode() in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
    return found


def charged_mib(sandbox_id: str, cgroup_parent: str) -> float:
    """Memory charged to the sandbox's cgroup (its own and what it maps), v1 or v2."""
    for path in (CGROUP_ROOT / "memory" / cgroup_parent / sandbox_id / "memory.usage_in_bytes",
                 CGROUP_ROOT / cgroup_parent / sandbox_id / "memory.current"):
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text()) / 2**20
    return 0.0


def memory_kib(pid: int) -> tuple[int, int]:
    """PSS and RSS of a process, in KiB (0, 0 when it has gone)."""
    values = {"Pss:": 0, "Rss:": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(" ")
            if key in values:
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values["Pss:"], values["Rss:"]


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


@dataclass(frozen=True)
class IdleCost:
    """Per pooled sandbox, on average."""

    pss_mib: float
    rss_mib: float
    charged_mib: float
    cpu_percent: float
    count: int


def idle_cost(state_dir: Path, cgroup_parent: str) -> IdleCost:
    ids = pooled_ids(state_dir)
    if not ids:
        raise PoolBenchError(f"no pooled sandbox in {state_dir}")
    pids = {pid for sandbox_id in ids for pid in processes_of(sandbox_id, cgroup_parent)}
    before = {pid: cpu_s(pid) for pid in pids}
    time.sleep(IDLE_WINDOW_S)
    used = sum(cpu_s(pid) - start for pid, start in before.items())
    sizes = [memory_kib(pid) for pid in pids]
    count = len(ids)
    return IdleCost(
        pss_mib=sum(pss for pss, _ in sizes) / 1024 / count,
        rss_mib=sum(rss for _, rss in sizes) / 1024 / count,
        charged_mib=sum(charged_mib(sandbox_id, cgroup_parent) for sandbox_id in ids) / count,
        cpu_percent=100 * used / IDLE_WINDOW_S / count,
        count=count,
    )


def idle_figure(name: str, state_dir: Path, cgroup_parent: str) -> Figure:
    cost = idle_cost(state_dir, cgroup_parent)
    return Figure(f"idle pooled sandbox: {name}",
                  f"{cost.charged_mib:.0f} MiB charged (PSS {cost.pss_mib:.0f}, RSS "
                  f"{cost.rss_mib:.0f}), CPU {cost.cpu_percent:.2f}% of a core")


# Refill -------------------------------------------------------------------------------------


def refill_figures(client: httpx.Client, size: int) -> list[Figure]:
    """The Python pool emptied at once, then refilled: sandboxes per second, and the mean
    time to start one (the pool's own histogram)."""
    wait_full(client, "python", size)

    def call(_: int) -> int:
        return client.post("/execute", params={"language": "python"}, content=HELLO).status_code

    with ThreadPoolExecutor(size) as threads:
        statuses = list(threads.map(call, range(size)))
    if statuses != [200] * size:
        raise PoolBenchError(f"emptying the pool answered {statuses}")
    seconds = wait_full(client, "python", size)
    count = metric(client, "sandbox_pool_refill_seconds_count", profile="python")
    total = metric(client, "sandbox_pool_refill_seconds_sum", profile="python")
    return [
        Figure("refill rate (python pool emptied at once)",
               f"{size / seconds:.2f} sandboxes/s ({size} in {seconds:.1f} s)"),
        Figure("time to start one warm python sandbox (mean)",
               f"{total / count:.2f} s over {count:.0f} starts"),
    ]


def cold_beside_pool(client: httpx.Client, runs: int, raw_p50_ms: float,
                     goal: float) -> Figure:
    """The cold path while the pool idles beside it (memory_mb=256 fits no profile)."""
    latencies = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.post("/execute", params={"language": "python", "memory_mb": "256"},
                               content=HELLO)
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise PoolBenchError(f"cold call answered {response.status_code}")
    ratio = p50_ms(latencies) / raw_p50_ms
    return Figure("cold python beside an idle pool / bare runsc",
                  f"{p50_ms(latencies):.0f} ms / {raw_p50_ms:.0f} ms = {ratio:.2f}x",
                  f"<= {goal}x", ratio <= goal)


def report(figures: Iterator[Figure] | list[Figure]) -> None:
    print()
    print("warm pools (default profiles python:2,bash:1, pandas imported ahead):")
    for figure in figures:
        print(figure.line())
