"""Benchmark of the egress proxy: what it adds to one connection, against a direct loopback
connection from the host to the same server. Part of `make bench` (scripts/bench.py).

Each call opens a connection, sends a small HTTP request and reads the answer to its end:
directly, through the proxy's Unix socket as plain HTTP and as a CONNECT tunnel (the host
side alone, as the relay inside a sandbox reaches it), and from inside a sandbox through its
relay and the proxy (timed inside, for what a sandbox sees). Loopback only: the one name the
proxy allows maps to 127.0.0.1 through the operator's map.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from sandbox.adapters.egress.allowance import EgressLimits
from sandbox.adapters.egress.proxy import SOCKET_NAME, EgressProxy
from sandbox.adapters.egress.resolver import Resolver
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.egress import EgressPolicy, parse_host_map
from sandbox.domain.lifecycle.execution import run_script
from sandbox.domain.model import Language
from sandbox.settings import Settings

NAME = "bench.test"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
SANDBOX_ID = "0" * 24
CALL_TIMEOUT_S = 30.0


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(ANSWER)
    await writer.drain()
    writer.close()


async def _exchange(
    opened: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes, tunnel: bytes
) -> None:
    reader, writer = opened
    if tunnel:
        writer.write(tunnel)
        await reader.readuntil(b"\r\n\r\n")
    writer.write(request)
    answer = await reader.read()
    writer.close()
    if not answer.endswith(b"ok"):
        raise RuntimeError(f"unexpected answer: {answer[:200]!r}")


async def _timed(case: str, port: int, socket_path: str) -> float:
    authority = f"{NAME}:{port}"
    started = time.perf_counter()
    async with asyncio.timeout(CALL_TIMEOUT_S):
        if case == "direct":
            await _exchange(await asyncio.open_connection("127.0.0.1", port),
                            f"GET / HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode(), b"")
        elif case == "plain":
            await _exchange(await asyncio.open_unix_connection(socket_path),
                            f"GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\r\n"
                            .encode(), b"")
        else:
            await _exchange(await asyncio.open_unix_connection(socket_path),
                            f"GET / HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode(),
                            f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
                            .encode())
    return time.perf_counter() - started


INSIDE = """
import socket, time
request = b"GET http://{authority}/ HTTP/1.1\\r\\nHost: {authority}\\r\\n\\r\\n"
for _ in range({runs} + 3):
    started = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(request)
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    s.close()
    assert answer.endswith(b"ok"), answer
    print(time.perf_counter() - started)
"""


async def _inside(settings: Settings, port: int, runs: int, state: Path) -> list[float]:
    """Per-connection times measured inside a sandbox, through its relay and the proxy."""
    egress = dataclasses.replace(settings, state_dir=state, egress_allow=f"{NAME}:{port}",
                                 egress_hosts=f"{NAME}=127.0.0.1",
                                 egress_connections_per_s=10_000.0)
    runtime = RunscSandboxRuntime(egress)
    await runtime.start()
    try:
        code = INSIDE.format(authority=f"{NAME}:{port}", runs=runs)
        limits = dataclasses.replace(settings.default_limits(), timeout_s=120)
        result = await run_script(runtime, Language.PYTHON, code.encode(), limits,
                                  network_allow=(f"{NAME}:{port}",))
    finally:
        await runtime.close()
    if result.outcome.exit_code != 0:
        raise RuntimeError(f"the sandbox's measurement failed: {result.stderr.text[-300:]}")
    return [float(line) for line in result.stdout.text.split()][3:]


async def _measure(settings: Settings, runs: int) -> dict[str, list[float]]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limits = EgressLimits(connections_per_s=10_000.0)
    proxy = EgressProxy(limits, Resolver(parse_host_map(f"{NAME}=127.0.0.1"), 5.0))
    times: dict[str, list[float]] = {"direct": [], "plain": [], "tunnel": []}
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-egress-") as tmp:
        folder = Path(tmp, "egress")
        await proxy.open(SANDBOX_ID, EgressPolicy.from_text(f"{NAME}:{port}"), folder,
                         os.getuid())
        try:
            socket_path = str(folder / SOCKET_NAME)
            for index in range(runs + 3):  # interleaved; the first three warm up
                for case, series in times.items():
                    elapsed = await _timed(case, port, socket_path)
                    if index >= 3:
                        series.append(elapsed)
            await _settled(proxy)
        finally:
            await proxy.close_all()
        async with server:
            times["inside"] = await _inside(settings, port, runs, Path(tmp, "state"))
    return times


async def _settled(proxy: EgressProxy) -> None:
    """Until the proxy has seen the last client close (bounded), so none is cut at the end."""
    for _ in range(500):
        if not proxy.connections(SANDBOX_ID):
            return
        await asyncio.sleep(0.01)


def _ms(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure_egress(settings: Settings, runs: int) -> None:
    times = asyncio.run(_measure(settings, runs))
    direct = statistics.median(times["direct"]) * 1000
    labels = {
        "direct": "direct from the host",
        "plain": "through the proxy, plain HTTP",
        "tunnel": "through the proxy, CONNECT tunnel",
        "inside": "inside a sandbox, relay + proxy",
    }
    print()
    print(f"egress proxy, per connection ({runs} each; connect, small request, answer to "
          "its end; a loopback server):")
    for case, label in labels.items():
        p50 = statistics.median(times[case]) * 1000
        added = "" if case == "direct" else f"   added p50 {p50 - direct:+.2f} ms"
        print(f"  {label:<36} p50 {p50:6.2f} ms  p95 {_ms(times[case], 0.95):6.2f} ms{added}")
