"""Long-lived sessions in `make bench`: P3 (an exec in a session against a bare `runsc exec`
of the same command in the same container) and P6 (idle density: what an idle session costs
the host, and how many fit while a hello world still answers within 1.5x of an empty
machine's time). Loopback only; every loop is bounded."""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from bench_pool import Figure, charged_mib, cpu_s, memory_kib, processes_of

GOAL_P3 = 0.5
GOAL_P6_SESSIONS = 200
GOAL_P6_RATIO = 1.5
SESSION_MEMORY_MB = 64
CREATORS = 8
IDLE_WINDOW_S = 10.0
CALL_TIMEOUT_S = 120.0
PRINT_ONE = "print(1)\n"
HELLO = b'print("hello")\n'


class SessionBenchError(RuntimeError):
    pass


def p50_ms(latencies: list[float]) -> float:
    return 1000 * statistics.median(latencies)


def create_session(client: httpx.Client, memory_mb: int = 256) -> str:
    answer = client.post("/sandboxes", json={"language": "python", "memory_mb": memory_mb,
                                             "idle_timeout": 86400})
    if answer.status_code != 201:
        raise SessionBenchError(f"POST /sandboxes answered {answer.status_code}: "
                                f"{answer.text[:300]}")
    sandbox_id: str = answer.json()["sandbox_id"]
    return sandbox_id


def service_exec(client: httpx.Client, sandbox_id: str) -> float:
    started = time.perf_counter()
    answer = client.post(f"/sandboxes/{sandbox_id}/exec",
                         json={"language": "python", "code": PRINT_ONE})
    took = time.perf_counter() - started
    if answer.status_code != 200 or answer.json().get("stdout") != "1\n":
        raise SessionBenchError(f"exec answered {answer.status_code}: {answer.text[:300]}")
    return took


def bare_exec(runsc: list[str], sandbox_id: str, process_file: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([*runsc, "exec", "--process", str(process_file), sandbox_id],
                          capture_output=True, timeout=CALL_TIMEOUT_S, check=False)
    took = time.perf_counter() - started
    if done.stdout != b"1\n":
        raise SessionBenchError(f"bare runsc exec gave {done.stdout[:200]!r} "
                                f"{done.stderr[-300:]!r}")
    return took


def exec_figure(client: httpx.Client, runsc: list[str], runs: int) -> Figure:
    """P3: the service's exec of `print(1)` over HTTP, against `runsc exec` of
    `python3 -c 'print(1)'` as the sandbox user in the same session, interleaved."""
    sandbox_id = create_session(client)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            process_file = Path(tmp, "process.json")
            process_file.write_text(json.dumps({
                "terminal": False, "user": {"uid": 1000, "gid": 1000},
                "args": ["python3", "-c", PRINT_ONE], "cwd": "/workspace",
                "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/workspace",
                        "LANG=C.UTF-8"],
            }))
            service_exec(client, sandbox_id)
            bare_exec(runsc, sandbox_id, process_file)
            service, bare = [], []
            for _ in range(runs):
                service.append(service_exec(client, sandbox_id))
                bare.append(bare_exec(runsc, sandbox_id, process_file))
    finally:
        client.delete(f"/sandboxes/{sandbox_id}")
    ratio = p50_ms(service) / p50_ms(bare)
    return Figure("P3: session exec / bare runsc exec, p50",
                  f"{p50_ms(service):.0f} ms / {p50_ms(bare):.0f} ms = {ratio:.2f}x",
                  f"<= {GOAL_P3}x", ratio <= GOAL_P3)


def hello_p50_ms(client: httpx.Client, runs: int) -> float:
    latencies = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = client.post("/execute?language=python", content=HELLO)
        latencies.append(time.perf_counter() - started)
        if answer.status_code != 200 or answer.json().get("stdout") != "hello\n":
            raise SessionBenchError(f"/execute answered {answer.status_code}: "
                                    f"{answer.text[:300]}")
    return p50_ms(latencies)


def host_cpu_percent(window_s: float) -> float:
    """The whole host's CPU use over the window, in cores' percent (200 = both cores)."""
    def busy_total() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0]
                  .split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    busy_before, total_before = busy_total()
    time.sleep(window_s)
    busy_after, total_after = busy_total()
    cores = len([line for line in Path("/proc/stat").read_text().split("\n")
                 if line.startswith("cpu") and line[3:4].isdigit()])
    return 100 * cores * (busy_after - busy_before) / max(1, total_after - total_before)


def idle_cost(ids: list[str], cgroup_parent: str) -> tuple[float, float, float]:
    """Per idle session: memory charged to its cgroup, PSS of its host processes (MiB), and
    CPU (percent of a core), measured over a window."""
    pids = {pid for sandbox_id in ids for pid in processes_of(sandbox_id, cgroup_parent)}
    before = {pid: cpu_s(pid) for pid in pids}
    time.sleep(IDLE_WINDOW_S)
    used = sum(cpu_s(pid) - start for pid, start in before.items())
    pss = sum(memory_kib(pid)[0] for pid in pids) / 1024
    charged = sum(charged_mib(sandbox_id, cgroup_parent) for sandbox_id in ids)
    return charged / len(ids), pss / len(ids), 100 * used / IDLE_WINDOW_S / len(ids)


def created(client: httpx.Client, count: int) -> list[str]:
    def one(_: int) -> str:
        return create_session(client, SESSION_MEMORY_MB)

    with ThreadPoolExecutor(CREATORS) as pool:
        return list(pool.map(one, range(count)))


def density_figures(client: httpx.Client, cgroup_parent: str, sessions: int,
                    runs: int) -> list[Figure]:
    """P6: a hello world's p50 on the empty server, then with `sessions` idle sessions
    held, and what each idle session costs."""
    empty = hello_p50_ms(client, runs)
    started = time.monotonic()
    ids = created(client, sessions)
    took = time.monotonic() - started
    try:
        charged, pss, cpu = idle_cost(ids, cgroup_parent)
        host = host_cpu_percent(IDLE_WINDOW_S)
        loaded = hello_p50_ms(client, runs)
    finally:
        delete_all(client, ids)
    ratio = loaded / empty
    return [
        Figure("idle session, each",
               f"{charged:.0f} MiB charged (PSS {pss:.0f}), CPU {cpu:.2f}% of a core"),
        Figure(f"P6: {sessions} idle sessions (started in {took:.0f} s)",
               f"host CPU {host:.0f}%; hello {loaded:.0f} / {empty:.0f} ms = {ratio:.2f}x",
               f">= {GOAL_P6_SESSIONS} within {GOAL_P6_RATIO}x",
               sessions >= GOAL_P6_SESSIONS and ratio <= GOAL_P6_RATIO),
    ]


def delete_all(client: httpx.Client, ids: list[str]) -> None:
    def one(sandbox_id: str) -> None:
        client.delete(f"/sandboxes/{sandbox_id}")

    with ThreadPoolExecutor(CREATORS) as pool:
        list(pool.map(one, ids))
