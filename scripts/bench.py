"""Benchmark: `POST /execute` through the service against a bare `runsc run` of the same script,
the warm pools against native Python in the same rootfs (`bench_pool.py`), and the cells of
code contexts (`bench_contexts.py`).

A benchmark, not a test: it prints a table and never fails on the figures. It needs root,
runsc and the rootfs (`make bench` sets them up) and talks to the server over loopback only.
Server and bare runsc get their own state folders and cgroup parent, so a server or tests
running beside the benchmark are left alone; of the SANDBOX_* variables, only those that
say where runsc and the rootfs are, and which platform to use, are passed on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import bench_contexts
import bench_handoff
import bench_pool
import bench_sessions
import bench_templates
import httpx
import structlog
import uvicorn
from bench_egress import measure_egress
from handmade_wheel import write_wheel

from sandbox.adapters.runsc import cgroups
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime, local_images
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.model import Language, Program, SandboxSpec
from sandbox.entrypoints.app import create_app
from sandbox.entrypoints.server import server_config
from sandbox.settings import Settings

WARMUP = 3
GOAL_P50_RATIO = 1.15
GOAL_LAYER_EXTRA_MS = 10.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 60.0
CGROUP_PARENT = "gvisor-sandbox-bench"
KEPT_SETTINGS = ("SANDBOX_ROOTFS_DIR", "SANDBOX_RUNSC_PATH", "SANDBOX_RUNSC_PLATFORM",
                 "SANDBOX_SESSION_PLATFORM", "SANDBOX_CHECKPOINT_COMPRESSION")
SCRIPTS = {Language.PYTHON: b'print("hello")\n', Language.BASH: b"echo hello\n"}
EXPECTED = "hello\n"


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Sample:
    latencies_s: list[float]
    wall_s: float

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies_s)
        position = (len(ordered) - 1) * fraction
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return 1000 * (ordered[low] + (ordered[high] - ordered[low]) * (position - low))

    @property
    def per_second(self) -> float:
        return len(self.latencies_s) / self.wall_s


def measure(work: Callable[[int], list[float]], runs: int, concurrency: int) -> Sample:
    """Share `runs` calls among `concurrency` workers; each returns its calls' latencies."""
    shares = [runs // concurrency + (i < runs % concurrency) for i in range(concurrency)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        parts = list(pool.map(work, shares))
    return Sample([x for part in parts for x in part], time.perf_counter() - started)


# The service, as a client sees it.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def bench_environ(state_dir: Path) -> dict[str, str]:
    """The environment of the server, and the settings of bare runsc."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")},
        **{k: os.environ[k] for k in KEPT_SETTINGS if k in os.environ},
        "SANDBOX_STATE_DIR": str(state_dir),
        "SANDBOX_RUNTIME": "runsc",
        "SANDBOX_CGROUP_PARENT": CGROUP_PARENT,
    }


@contextlib.contextmanager
def running_server(
    state_dir: Path, log_path: Path, wheels: Path, pool: str = "", preimport: str | None = None,
    extra: dict[str, str] | None = None,
) -> Iterator[str]:
    """A server; without `pool`, one with no warm pool (every call takes the cold path)."""
    with server_process(state_dir, log_path, wheels, pool, preimport, extra) as (base_url, _):
        yield base_url


@contextlib.contextmanager
def server_process(
    state_dir: Path, log_path: Path, wheels: Path, pool: str = "", preimport: str | None = None,
    extra: dict[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A ready server and its process, which the caller may stop itself; stopped after."""
    port = free_port()
    env = {
        **bench_environ(state_dir),
        "SANDBOX_HOST": "127.0.0.1",
        "SANDBOX_PORT": str(port),
        "SANDBOX_LOG_FORMAT": "json",
        # Packages come from a local folder of handmade wheels: no index, no network.
        "SANDBOX_PIP_FIND_LINKS": str(wheels),
        "SANDBOX_PIP_NO_INDEX": "true",
        "SANDBOX_POOL": pool,
        **({"SANDBOX_POOL_PREIMPORT": preimport} if preimport is not None else {}),
        **(extra or {}),
    }
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "sandbox"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, base_url)
        yield base_url, server
    except BaseException:
        print(f"server log (last lines of {log_path}):", file=sys.stderr)
        print(*log_path.read_text(errors="replace").splitlines()[-20:], sep="\n", file=sys.stderr)
        raise
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_ready(server: subprocess.Popen[bytes], base_url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(f"the server exited with code {server.returncode} before it was ready")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise BenchError(f"the server was not ready within {READY_TIMEOUT_S:.0f} s")


def service_work(
    base_url: str, language: Language, packages: str | None = None
) -> Callable[[int], list[float]]:
    params = {"language": language.value, **({"packages": packages} if packages else {})}

    def work(calls: int) -> list[float]:
        latencies = []
        with httpx.Client(base_url=base_url, timeout=CALL_TIMEOUT_S) as client:
            for _ in range(calls):
                started = time.perf_counter()
                response = client.post("/execute", params=params, content=SCRIPTS[language])
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200 or response.json().get("stdout") != EXPECTED:
                    raise BenchError(f"POST /execute answered {response.status_code}: "
                                     f"{response.text[:300]}")
        return latencies

    return work


# Bare runsc: the same bundle the service would write, and only the `runsc run` timed.


def raw_work(runtime: RunscSandboxRuntime, settings: Settings, language: Language
             ) -> Callable[[int], list[float]]:
    def once() -> float:
        spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=settings.default_limits())
        bundle = runtime.write_bundle(spec, Program.script(language, SCRIPTS[language]))
        argv = runtime.command("run", "--bundle", str(bundle), spec.sandbox_id)
        ended = False
        try:
            started = time.perf_counter()
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=CALL_TIMEOUT_S, check=False)
            elapsed = time.perf_counter() - started
            ended = done.returncode == 0
        except subprocess.TimeoutExpired:
            raise BenchError(f"runsc run took more than {CALL_TIMEOUT_S:.0f} s") from None
        finally:
            # A container whose `runsc run` failed may be left behind.
            if not ended:
                subprocess.run(runtime.command("delete", "--force", spec.sandbox_id),
                               capture_output=True, check=False)
            runtime.remove_bundle(spec.sandbox_id)
        if not ended or done.stdout.decode() != EXPECTED:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise BenchError(f"runsc run exited {done.returncode}: {output[:300]}")
        return elapsed

    def work(calls: int) -> list[float]:
        return [once() for _ in range(calls)]

    return work


# The report.


@dataclass(frozen=True)
class Case:
    language: Language
    concurrency: int
    service: Sample
    raw: Sample

    @property
    def name(self) -> str:
        mode = "sequential" if self.concurrency == 1 else f"{self.concurrency} concurrent"
        return f"{self.language.value} {mode}"


def report(cases: list[Case], runs: int, settings: Settings, version: str) -> None:
    print()
    print(f"{runs} runs per case after {WARMUP} warm-ups; {os.cpu_count()} cores; "
          f"runsc {version} on {settings.runsc_platform}; rootfs {settings.rootfs_dir}")
    print("latency in ms per call; service = POST /execute over HTTP, raw = bare `runsc run`")
    print()
    print(f"{'case':<22}{'service p50':>12}{'p95':>8}{'raw p50':>10}{'p95':>8}"
          f"{'ratio p50':>11}{'p95':>7}{'service/s':>11}{'raw/s':>8}")
    for case in cases:
        s50, s95 = case.service.percentile_ms(0.5), case.service.percentile_ms(0.95)
        r50, r95 = case.raw.percentile_ms(0.5), case.raw.percentile_ms(0.95)
        line = (f"{case.name:<22}{s50:>12.0f}{s95:>8.0f}{r50:>10.0f}{r95:>8.0f}"
                f"{s50 / r50:>11.2f}{s95 / r95:>7.2f}"
                f"{case.service.per_second:>11.1f}{case.raw.per_second:>8.1f}")
        if case.concurrency == 1:
            verdict = "met" if s50 / r50 <= GOAL_P50_RATIO else "not met"
            line += f"   goal p50 ratio <= {GOAL_P50_RATIO}: {verdict}"
        print(line)


# Packages: what a cached layer adds to a call, and what a first install costs.

BENCH_PACKAGES = [f"benchpkg{index}" for index in range(5)]


def write_bench_wheels(folder: Path) -> None:
    folder.mkdir()
    for name in BENCH_PACKAGES:
        write_wheel(folder, name, {f"{name}/__init__.py": "VALUE = 1\n"})


def measure_packages(base_url: str, runs: int) -> None:
    first = [service_work(base_url, Language.PYTHON, name)(1)[0] for name in BENCH_PACKAGES]
    cached_layer = service_work(base_url, Language.PYTHON, BENCH_PACKAGES[0])
    no_packages = service_work(base_url, Language.PYTHON)
    with_layer: list[float] = []
    without: list[float] = []
    for _ in range(runs):  # interleaved, so that drift on a shared machine hits both alike
        with_layer += cached_layer(1)
        without += no_packages(1)
    cached = Sample(with_layer, sum(with_layer)).percentile_ms(0.5)
    plain = Sample(without, sum(without)).percentile_ms(0.5)
    installs = Sample(first, sum(first))
    print()
    print(f"packages (a handmade wheel from a local folder, {runs} calls each, interleaved):")
    print(f"  first install of a new set: p50 {installs.percentile_ms(0.5):.0f} ms "
          f"(max {installs.percentile_ms(1.0):.0f}) over {len(first)} sets, pip included")
    print(f"  cached layer: p50 {cached:.0f} ms, no packages: p50 {plain:.0f} ms, "
          f"extra {cached - plain:+.1f} ms   goal under {GOAL_LAYER_EXTRA_MS:.0f} ms: "
          f"{'met' if cached - plain < GOAL_LAYER_EXTRA_MS else 'not met'}")


# The event loop while a hostile body is read: the server's own loop, measured from inside.

LAG_PROBE_S = 0.001
# Each body ends with a block asking for a package the server denies: the server reads and
# checks the whole body, then answers 400 without running it (the fake runtime's own
# reading of a script would be measured too otherwise).
DENIED_PACKAGE = "benchdenied"
DENIED_BLOCK = f'x = 1\n# /// script\n# dependencies = ["{DENIED_PACKAGE}"]\n# ///\n'.encode()


def crafted_pep723_body(size: int) -> bytes:
    """`# /// a` lines then `#` lines (the body that froze the server: a backtracking search
    of it took minutes at 1 MiB), then the denied block."""
    size -= len(DENIED_BLOCK)
    return b"# /// a\n" * (size // 16) + b"#\n" * (size // 4) + DENIED_BLOCK


async def worst_loop_lag(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """The worst lateness (s) of a task sleeping LAG_PROBE_S in a loop on this event loop,
    while `work` is awaited; and how long `work` took."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    finished = asyncio.Event()

    async def probe() -> None:
        nonlocal worst
        while not finished.is_set():
            before = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            worst = max(worst, loop.time() - before - LAG_PROBE_S)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0.05)  # the probe is running before the work starts
    started = time.perf_counter()
    try:
        await work()
    finally:
        took = time.perf_counter() - started
        finished.set()
        await prober
    return worst, took


async def served(server: uvicorn.Server, listener: socket.socket) -> asyncio.Task[None]:
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    async with asyncio.timeout(READY_TIMEOUT_S):
        while True:
            if server.started:
                return serving
            await asyncio.sleep(0.01)


async def measure_loop_lag(state_dir: Path) -> None:
    """The app on the fake runtime, served by uvicorn on this loop; the client in a thread."""
    settings = Settings(runtime="fake", state_dir=state_dir, packages_deny=DENIED_PACKAGE)
    body = crafted_pep723_body(settings.max_body_bytes)
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(create_app(settings), settings))
    serving = await served(server, listener)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/execute?language=python"

    def post(content: bytes) -> None:
        response = httpx.post(url, content=content, timeout=CALL_TIMEOUT_S)
        if DENIED_PACKAGE not in response.text:
            raise BenchError(f"POST /execute answered {response.status_code}: "
                             f"{response.text[:300]}")

    try:
        plain_lag, plain_took = await worst_loop_lag(lambda: asyncio.to_thread(post, DENIED_BLOCK))
        lag, took = await worst_loop_lag(lambda: asyncio.to_thread(post, body))
    finally:
        server.should_exit = True
        await serving
        listener.close()
    print()
    print(f"event loop (a task sleeping {LAG_PROBE_S * 1000:.0f} ms in a loop, worst lateness):")
    print(f"  while a crafted {len(body) // 1024} KiB PEP 723 body is read and checked: "
          f"{lag * 1000:.1f} ms (the request took {took * 1000:.0f} ms)")
    print(f"  while a short script is: {plain_lag * 1000:.1f} ms "
          f"(the request took {plain_took * 1000:.0f} ms)")


# The event loop while a large checkpoint is removed: how long every other request and timer
# of the server waits.

CHECKPOINT_MIB = 1024


def write_checkpoint(image: Path) -> None:
    image.mkdir(parents=True)
    block = os.urandom(2**20)
    with (image / "checkpoint.img").open("wb") as out:
        for _ in range(CHECKPOINT_MIB):
            out.write(block)
        os.fsync(out.fileno())


def measure_checkpoint_removal(runtime: RunscSandboxRuntime, settings: Settings) -> None:
    async def on_the_loop(image: Path) -> None:
        shutil.rmtree(image)  # what the service did before

    async def in_a_thread(image: Path) -> None:
        await runtime.discard_checkpoint(str(image))

    lags = {}
    for name, remove in (("on the event loop (before)", on_the_loop),
                         ("in a worker thread (the service now)", in_a_thread)):
        image = local_images(settings) / new_sandbox_id()
        write_checkpoint(image)
        lag, _ = asyncio.run(worst_loop_lag(functools.partial(remove, image)))
        lags[name] = lag * 1000
        if image.exists():
            raise BenchError(f"the checkpoint {image} was not removed")
    print()
    print(f"removing a {CHECKPOINT_MIB} MiB checkpoint folder, worst lag of the event loop:")
    for name, lag in lags.items():
        print(f"  {name}: {lag:.1f} ms")
def measure_cold(
    tmp: Path, wheels: Path, runtime: RunscSandboxRuntime, settings: Settings,
    args: argparse.Namespace,
) -> list[Case]:
    """The cold path (a server without pools) against bare runsc, and package layers."""
    cases = []
    with running_server(tmp / "server", tmp / "server.log", wheels) as base_url:
        for concurrency in (1, args.concurrency):
            for language in SCRIPTS:
                service = service_work(base_url, language)
                raw = raw_work(runtime, settings, language)
                if concurrency == 1:
                    service(WARMUP)
                    raw(WARMUP)
                print(f"measuring {language.value} with concurrency {concurrency}...",
                      flush=True)
                cases.append(Case(language, concurrency,
                                  measure(service, args.runs, concurrency),
                                  measure(raw, args.runs, concurrency)))
        report(cases, args.runs, settings, runsc_version(runtime))
        measure_packages(base_url, args.runs)
    return cases


def measure_pools(
    tmp: Path, wheels: Path, settings: Settings, args: argparse.Namespace, raw_p50_ms: float
) -> None:
    """P2, P8, refill and the cold path beside a pool on the default pools; then the idle
    cost of each kind of pooled sandbox, each alone in a server of its own."""
    figures: list[bench_pool.Figure] = []
    print("measuring the warm pools...", flush=True)
    with running_server(tmp / "pool", tmp / "pool.log", wheels, "python:2,bash:1") as base_url, \
            httpx.Client(base_url=base_url, timeout=CALL_TIMEOUT_S) as client:
        figures += bench_pool.latency_figures(client, settings.rootfs_dir, args.warm_runs)
        figures += bench_pool.refill_figures(client, 2)
        bench_pool.wait_full(client, "python", 2)
        figures.append(bench_pool.cold_beside_pool(client, args.warm_runs, raw_p50_ms,
                                                   GOAL_P50_RATIO))
    for name, pool, preimport in (("python, pandas imported", "python:2", None),
                                  ("python, nothing imported", "python:2", ""),
                                  ("bash", "bash:2", None)):
        state = tmp / f"idle-{pool}-{preimport}"
        with running_server(state, tmp / "idle.log", wheels, pool, preimport) as base_url, \
                httpx.Client(base_url=base_url, timeout=CALL_TIMEOUT_S) as client:
            bench_pool.wait_full(client, pool.split(":")[0], 2)
            figures.append(bench_pool.idle_figure(name, state, CGROUP_PARENT))
    bench_pool.report(figures)


def measure_contexts(tmp: Path, wheels: Path, args: argparse.Namespace) -> None:
    print("measuring code contexts...", flush=True)
    with running_server(tmp / "contexts", tmp / "contexts.log", wheels) as base_url, \
            httpx.Client(base_url=base_url, timeout=CALL_TIMEOUT_S) as client:
        bench_contexts.report(bench_contexts.context_timings(client, args.runs))


def measure_sessions(
    tmp: Path, wheels: Path, settings: Settings, args: argparse.Namespace
) -> None:
    """P3 and P6 on a server without pools (a hello world takes the cold path, whose time
    is what idle sessions could slow down)."""
    print(f"measuring sessions ({args.density} idle for P6)...", flush=True)
    state = tmp / "sessions"
    with running_server(state, tmp / "sessions.log", wheels, extra={
                "SANDBOX_MAX_RUNNING_SANDBOXES": str(args.density + 16),
                "SANDBOX_MAX_CONCURRENT_CALLS": "64"}) as base_url, \
            httpx.Client(base_url=base_url, timeout=CALL_TIMEOUT_S) as client:
        runsc = [settings.runsc_path, f"--root={state / 'runsc'}"]
        figures = [bench_sessions.exec_figure(client, runsc, args.runs)]
        figures += bench_sessions.density_figures(client, CGROUP_PARENT, args.density,
                                                  args.warm_runs)
    print()
    print("long-lived sessions (on SANDBOX_SESSION_PLATFORM, ptrace by default):")
    for figure in figures:
        print(figure.line())


def measure_templates(
    tmp: Path, wheels: Path, runtime: RunscSandboxRuntime, settings: Settings,
    args: argparse.Namespace,
) -> None:
    """P4, a start from a template and a fork of 8, on a server without pools."""
    print("measuring checkpoints (P4), templates and fork...", flush=True)
    with running_server(tmp / "templates", tmp / "templates.log", wheels, extra={
                "SANDBOX_MAX_RUNNING_SANDBOXES": "16",
                "SANDBOX_MAX_TOTAL_MEMORY_MB": str(16 * bench_templates.MEMORY_MB)}) as base_url, \
            httpx.Client(base_url=base_url, timeout=CALL_TIMEOUT_S) as client:
        figures = bench_templates.measure(client, runtime, settings, CGROUP_PARENT,
                                          args.checkpoint_rounds)
    print()
    print(f"checkpoints of sessions (on {settings.session_platform}, "
          f"--compression={settings.checkpoint_compression}):")
    for figure in figures:
        print(figure.line())


def measure_handoff(
    tmp: Path, wheels: Path, runtime: RunscSandboxRuntime, settings: Settings,
    args: argparse.Namespace,
) -> None:
    """P9 on two instances sharing a throwaway PostgreSQL and a checkpoint folder."""
    print(f"measuring handoffs between two instances ({args.handoffs} rounds)...", flush=True)
    try:
        figures = bench_handoff.handoff_figures(tmp / "handoff", server_process, wheels, runtime,
                                                settings, CGROUP_PARENT, args.handoffs)
    finally:
        for name in ("a", "b", "c"):
            cgroups.remove_parent(f"{CGROUP_PARENT}-{name}")
    print()
    print("many instances (issue 9):")
    for figure in figures:
        print(figure.line())


def runsc_version(runtime: RunscSandboxRuntime) -> str:
    done = subprocess.run(runtime.command("--version"), capture_output=True, text=True,
                          timeout=CALL_TIMEOUT_S, check=False)
    return done.stdout.partition("\n")[0].removeprefix("runsc version ").strip() or "unknown"


def count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}")
        return value

    return parse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Service latency against bare runsc.")
    parser.add_argument("--runs", type=count(1, 1000), default=30,
                        help="calls per case (default 30)")
    parser.add_argument("--concurrency", type=count(2, 32), default=4,
                        help="clients in the concurrent cases (default 4)")
    parser.add_argument("--pools-only", action="store_true",
                        help="only the warm-pool figures (bare runsc still timed for one)")
    parser.add_argument("--warm-runs", type=count(1, 1000), default=15,
                        help="calls per warm-pool figure, each on a full pool (default 15)")
    parser.add_argument("--contexts-only", action="store_true",
                        help="only the code contexts' figures")
    parser.add_argument("--sessions-only", action="store_true",
                        help="only the session figures (P3, P6)")
    parser.add_argument("--handoff-only", action="store_true",
                        help="only the handoff figure (P9)")
    parser.add_argument("--handoffs", type=count(1, 100), default=8,
                        help="handoffs timed for P9 (default 8)")
    parser.add_argument("--density", type=count(1, 400), default=200,
                        help="idle sessions held for P6 (default 200)")
    parser.add_argument("--templates-only", action="store_true",
                        help="only the checkpoint figures (P4, templates, fork)")
    parser.add_argument("--checkpoint-rounds", type=count(1, 50), default=5,
                        help="suspends and restores per P4 figure (default 5)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (runsc needs it)", file=sys.stderr)
        return 2
    # The runtime used for bare runsc logs through structlog: keep its chatter off the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        settings = Settings.from_env(bench_environ(Path(tmp, "raw")))
        runtime = RunscSandboxRuntime(settings)
        try:
            # Started before the server, so that whichever clears leftovers when it starts
            # meets no live sandbox of the other.
            asyncio.run(runtime.start())
            wheels = Path(tmp, "wheels")
            write_bench_wheels(wheels)
            if args.handoff_only:
                measure_handoff(Path(tmp), wheels, runtime, settings, args)
                return 0
            if args.contexts_only:
                measure_contexts(Path(tmp), wheels, args)
                return 0
            if args.sessions_only:
                measure_sessions(Path(tmp), wheels, settings, args)
                return 0
            if args.templates_only:
                measure_templates(Path(tmp), wheels, runtime, settings, args)
                return 0
            if args.pools_only:
                raw_python = raw_work(runtime, settings, Language.PYTHON)
                raw_python(WARMUP)
                raw_p50_ms = measure(raw_python, args.runs, 1).percentile_ms(0.5)
            else:
                cases = measure_cold(Path(tmp), wheels, runtime, settings, args)
                raw_p50_ms = next(case.raw for case in cases if case.language is Language.PYTHON
                                  and case.concurrency == 1).percentile_ms(0.5)
            measure_pools(Path(tmp), wheels, settings, args, raw_p50_ms)
            if not args.pools_only:
                measure_contexts(Path(tmp), wheels, args)
                measure_sessions(Path(tmp), wheels, settings, args)
                measure_templates(Path(tmp), wheels, runtime, settings, args)
                measure_handoff(Path(tmp), wheels, runtime, settings, args)
                measure_egress(settings, args.runs)
                asyncio.run(measure_loop_lag(Path(tmp, "loop-lag")))
                measure_checkpoint_removal(runtime, settings)
        except (BenchError, bench_pool.PoolBenchError, bench_contexts.ContextBenchError,
                bench_sessions.SessionBenchError, bench_templates.TemplateBenchError,
                bench_handoff.HandoffBenchError) as error:
            print(f"bench: {error}", file=sys.stderr)
            return 1
        finally:
            asyncio.run(runtime.close())
            cgroups.remove_parent(CGROUP_PARENT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
