"""The egress proxy on the host, spoken to over its Unix socket as a sandbox's relay would.
Every upstream is a loopback server reached through the operator's map."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import stat
from pathlib import Path

import pytest
import structlog
from egress_support import SANDBOX_ID, echo_server, http_server, proxied
from prometheus_client.parser import text_string_to_metric_families

from sandbox.adapters.egress.allowance import Allowance, EgressLimits
from sandbox.adapters.egress.outcome import Refused
from sandbox.adapters.egress.proxy import SOCKET_NAME
from sandbox.adapters.egress.resolver import Resolver
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.containers import Container
from sandbox.domain.egress import EgressPolicy
from sandbox.settings import Settings

pytestmark = pytest.mark.anyio
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"


def served(answer: bytes) -> bool:
    """Whether the proxy passed on the test servers' answer (re-framed by h11, so its header
    names are lower case and it says the connection closes)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return (head.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" in head
            and body == b"hello")


def tunnel(authority: str) -> bytes:
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_tunnel_to_an_allowed_name_carries_bytes_both_ways(tmp_path: Path) -> None:
    async with echo_server() as upstream, proxied(
            tmp_path, f"echo.test:{upstream.port}", "echo.test=127.0.0.1") as proxy:
        reader, writer = await proxy.connect()
        writer.write(f"CONNECT echo.test:{upstream.port} HTTP/1.1\r\n"
                     f"Host: echo.test:{upstream.port}\r\n\r\nearly".encode())
        established = await reader.readuntil(b"\r\n\r\n")
        echoed = await reader.readexactly(5)
        writer.write(b" and later")
        later = await reader.readexactly(10)
        writer.close()
        await proxy.settled()

    assert established.startswith(b"HTTP/1.1 200")
    assert (echoed, later) == (b"early", b" and later")
    assert proxy.metrics.connections == [("relayed", 15, 15)]


async def test_a_plain_http_request_goes_to_its_host_with_its_host_header_and_no_proxy_headers(
    tmp_path: Path,
) -> None:
    async with http_server(OK) as upstream, proxied(
            tmp_path, f"web.test:{upstream.port}", "web.test=127.0.0.1") as proxy:
        answer = await proxy.ask(
            f"GET http://web.test:{upstream.port}/path?q=1 HTTP/1.1\r\n"
            "Host: elsewhere.test\r\nProxy-Authorization: Basic c2VjcmV0\r\n"
            "Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Private\r\n"
            "X-Private: 1\r\nAccept: */*\r\n\r\n".encode())
        await proxy.settled()

    assert served(answer)
    head = upstream.requests[0].decode().lower().split("\r\n")
    assert head[0] == "get /path?q=1 http/1.1"
    assert f"host: web.test:{upstream.port}" in head
    assert "accept: */*" in head and "connection: close" in head
    assert not [line for line in head if line.startswith(("proxy-", "x-private", "host: else"))]


async def test_a_request_with_a_body_is_passed_on_whole(tmp_path: Path) -> None:
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        received.append(head + await reader.readexactly(11))
        writer.write(OK)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, proxied(tmp_path, f"web.test:{port}", "web.test=127.0.0.1") as proxy:
        answer = await proxy.ask(f"POST http://web.test:{port}/ HTTP/1.1\r\nHost: web.test\r\n"
                                 "Content-Length: 11\r\n\r\nhello there".encode())

    assert served(answer)
    assert received[0].endswith(b"\r\n\r\nhello there")


@pytest.mark.parametrize(
    ("request_line", "status", "reason"),
    [
        ("CONNECT evil.test:443", b"403", b"evil.test:443 is not in this sandbox's allow-list"),
        ("CONNECT web.test:22", b"403", b"web.test:22 is not in this sandbox's allow-list"),
        ("GET http://evil.test/", b"403", b"evil.test:80 is not in this sandbox's allow-list"),
        ("CONNECT 127.0.0.1:443", b"403", b"127.0.0.1 is an IP address"),
        ("CONNECT [::1]:443", b"403", b"::1 is an IP address"),
        ("GET http://[::ffff:127.0.0.1]/", b"403", b"is an IP address"),
        ("CONNECT metadata.google.internal:80", b"403", b"cloud metadata"),
        ("CONNECT 0x7f000001:443", b"400", b"not a host name"),
        ("CONNECT web.test", b"400", b"name the port"),
        ("GET https://web.test/", b"400", b"https goes through CONNECT"),
        ("GET /relative", b"400", b"a proxy takes http://host/path"),
        ("GET http://user:pw@web.test/", b"400", b"credentials"),
    ],
)
async def test_what_the_allow_list_does_not_name_is_refused_with_its_reason(
    tmp_path: Path, request_line: str, status: bytes, reason: bytes
) -> None:
    async with proxied(tmp_path, "web.test") as proxy:
        answer = await proxy.ask(f"{request_line} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await proxy.settled()

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 " + status)
    assert reason in status_line and reason in rest
    assert b"Proxy-Status: sandbox-egress; error=" in rest
    assert proxy.metrics.connections[0][0] in ("refused_policy", "refused_address",
                                               "bad_request")


async def test_garbage_instead_of_a_request_is_a_400(tmp_path: Path) -> None:
    async with proxied(tmp_path, "web.test") as proxy:
        answer = await proxy.ask(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
        await proxy.settled()

    assert answer.startswith(b"HTTP/1.1 400")
    assert proxy.metrics.connections == [("bad_request", 0, 0)]


async def test_an_allowed_name_that_resolves_inward_is_refused(tmp_path: Path) -> None:
    async def lookup(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.7"]

    async with proxied(tmp_path, "inward.test", lookup=lookup) as proxy:
        answer = await proxy.ask(tunnel("inward.test:443"))

    assert answer.startswith(b"HTTP/1.1 403")
    assert b"inward.test resolves to 10.0.0.7, private: refused" in answer


async def test_localhost_is_refused_when_the_operator_map_does_not_name_it(
    tmp_path: Path,
) -> None:
    async with echo_server() as upstream, proxied(tmp_path, f"localhost:{upstream.port}") as proxy:
        answer = await proxy.ask(tunnel(f"localhost:{upstream.port}"))

    assert answer.startswith(b"HTTP/1.1 403")
    assert b"localhost resolves to" in answer and b"loopback: refused" in answer


async def test_a_name_that_cannot_be_resolved_is_a_502(tmp_path: Path) -> None:
    async def lookup(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    async with proxied(tmp_path, "nowhere.test", lookup=lookup) as proxy:
        answer = await proxy.ask(tunnel("nowhere.test:443"))
        await proxy.settled()

    assert answer.startswith(b"HTTP/1.1 502")
    assert b"cannot resolve nowhere.test" in answer
    assert proxy.metrics.connections == [("failed_upstream", 0, 0)]


async def test_a_closed_port_is_a_502(tmp_path: Path) -> None:
    async with echo_server() as upstream:
        port = upstream.port
    async with proxied(tmp_path, f"gone.test:{port}", "gone.test=127.0.0.1") as proxy:
        answer = await proxy.ask(tunnel(f"gone.test:{port}"))

    assert answer.startswith(b"HTTP/1.1 502")
    assert b"cannot connect to gone.test" in answer


async def test_connections_beyond_the_open_cap_are_refused_with_429(tmp_path: Path) -> None:
    async with echo_server() as upstream, proxied(
            tmp_path, f"echo.test:{upstream.port}", "echo.test=127.0.0.1",
            max_connections=2) as proxy:
        held = [await proxy.connect() for _ in range(2)]
        for _reader, writer in held:
            writer.write(tunnel(f"echo.test:{upstream.port}"))
        for reader, _writer in held:
            await reader.readuntil(b"\r\n\r\n")

        refused = await proxy.ask(tunnel(f"echo.test:{upstream.port}"))
        for _reader, writer in held:
            writer.close()
        await proxy.settled()
        after = await proxy.head(tunnel(f"echo.test:{upstream.port}"))

    assert refused.startswith(b"HTTP/1.1 429")
    assert b"2 egress connections open, the most allowed (2)" in refused
    assert after.startswith(b"HTTP/1.1 200")


async def test_a_burst_beyond_the_connection_rate_is_refused_with_429(tmp_path: Path) -> None:
    async with http_server(OK) as upstream, proxied(
            tmp_path, f"web.test:{upstream.port}", "web.test=127.0.0.1",
            connections_per_s=0.01) as proxy:
        request = f"GET http://web.test:{upstream.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        answers = [await proxy.ask(request) for _ in range(5)]
        await proxy.settled()

    assert served(answers[0])
    assert all(answer.startswith(b"HTTP/1.1 429") and b"faster than the 0.01 a second"
               in answer for answer in answers[1:])
    assert len(upstream.requests) == 1


def test_the_connection_rate_allows_a_burst_then_refills_at_its_rate() -> None:
    now = [100.0]
    allowance = Allowance(EgressLimits(connections_per_s=4, max_connections=100),
                          clock=lambda: now[0])

    def admitted(attempts: int) -> int:
        count = 0
        for _ in range(attempts):
            try:
                allowance.admit()
            except Refused:
                continue
            count += 1
        return count

    assert admitted(10) == 4
    now[0] += 0.5
    assert admitted(10) == 2
    now[0] += 10
    assert admitted(10) == 4


async def test_a_tunnel_past_the_byte_cap_is_cut_and_later_connections_refused(
    tmp_path: Path,
) -> None:
    async with echo_server() as upstream, proxied(
            tmp_path, f"echo.test:{upstream.port}", "echo.test=127.0.0.1",
            max_bytes=1000) as proxy:
        reader, writer = await proxy.connect()
        writer.write(tunnel(f"echo.test:{upstream.port}"))
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"x" * 600)
        await reader.readexactly(600)
        writer.write(b"y" * 600)
        async with asyncio.timeout(10):
            rest = await reader.read()
        writer.close()
        await proxy.settled()
        later = await proxy.ask(tunnel(f"echo.test:{upstream.port}"))

    assert rest == b""
    assert proxy.metrics.connections[0] == ("cut_bytes", 600, 600)
    assert later.startswith(b"HTTP/1.1 429")
    assert b"allowance of 1000 bytes each way" in later


async def test_an_idle_tunnel_is_cut(tmp_path: Path) -> None:
    async with echo_server() as upstream, proxied(
            tmp_path, f"echo.test:{upstream.port}", "echo.test=127.0.0.1",
            idle_timeout_s=0.2) as proxy:
        reader, writer = await proxy.connect()
        writer.write(tunnel(f"echo.test:{upstream.port}"))
        await reader.readuntil(b"\r\n\r\n")
        async with asyncio.timeout(10):
            ended = await reader.read()
        writer.close()
        await proxy.settled()

    assert ended == b""
    assert proxy.metrics.connections == [("cut_idle", 0, 0)]


async def test_a_tunnel_open_past_the_total_time_is_cut(tmp_path: Path) -> None:
    async with echo_server() as upstream, proxied(
            tmp_path, f"echo.test:{upstream.port}", "echo.test=127.0.0.1",
            total_timeout_s=0.3) as proxy:
        reader, writer = await proxy.connect()
        writer.write(tunnel(f"echo.test:{upstream.port}"))
        await reader.readuntil(b"\r\n\r\n")
        async with asyncio.timeout(10):
            while await reader.read(10):
                writer.write(b"busy")
                await asyncio.sleep(0.02)
        writer.close()
        await proxy.settled()

    assert proxy.metrics.connections[0][0] == "cut_timeout"


async def test_interrupt_ends_open_connections_and_the_sandbox_may_connect_again(
    tmp_path: Path,
) -> None:
    async with echo_server() as upstream, proxied(
            tmp_path, f"echo.test:{upstream.port}", "echo.test=127.0.0.1") as proxy:
        reader, writer = await proxy.connect()
        writer.write(tunnel(f"echo.test:{upstream.port}"))
        await reader.readuntil(b"\r\n\r\n")

        await proxy.proxy.interrupt(SANDBOX_ID)

        async with asyncio.timeout(10):
            ended = await reader.read()
        writer.close()
        again = await proxy.head(tunnel(f"echo.test:{upstream.port}"))

    assert ended == b""
    assert again.startswith(b"HTTP/1.1 200")
    assert proxy.metrics.connections[0][0] == "cut_interrupted"


async def test_close_leaves_no_socket_no_listener_and_no_connection(tmp_path: Path) -> None:
    async with echo_server() as upstream, proxied(
            tmp_path, f"echo.test:{upstream.port}", "echo.test=127.0.0.1") as proxy:
        reader, writer = await proxy.connect()
        writer.write(tunnel(f"echo.test:{upstream.port}"))
        await reader.readuntil(b"\r\n\r\n")
        tasks_before = len(asyncio.all_tasks())

        await proxy.proxy.close(SANDBOX_ID)

        async with asyncio.timeout(10):
            ended = await reader.read()
        writer.close()
        assert ended == b""
        assert not (proxy.folder / SOCKET_NAME).exists()
        assert proxy.proxy.listening() == set()
        assert proxy.proxy.connections(SANDBOX_ID) == 0
        assert len(asyncio.all_tasks()) < tasks_before
        with pytest.raises(OSError):
            await proxy.connect()


async def test_the_socket_and_its_folder_are_for_their_owner_alone(tmp_path: Path) -> None:
    async with proxied(tmp_path, "web.test") as proxy:
        folder_mode = stat.S_IMODE(proxy.folder.stat().st_mode)
        socket_mode = stat.S_IMODE((proxy.folder / SOCKET_NAME).stat().st_mode)

    assert (folder_mode, socket_mode) == (0o700, 0o600)


async def test_a_socket_is_made_even_where_its_path_is_longer_than_unix_sockets_allow(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 100) / ("e" * 100)

    async with proxied(deep, "web.test") as proxy:
        answer = await proxy.ask(tunnel("evil.test:443"))

    assert len(str(proxy.folder / SOCKET_NAME)) > 108
    assert answer.startswith(b"HTTP/1.1 403")


async def test_every_connection_is_logged_with_what_it_moved(tmp_path: Path) -> None:
    async with http_server(OK) as upstream, proxied(
            tmp_path, f"web.test:{upstream.port}", "web.test=127.0.0.1") as proxy:
        with structlog.testing.capture_logs() as logs:
            await proxy.ask(f"GET http://web.test:{upstream.port}/ HTTP/1.1\r\n"
                            "Host: x\r\n\r\n".encode())
            await proxy.ask(tunnel("evil.test:443"))
            await proxy.settled()

    lines = [entry for entry in logs if entry["event"] == "egress.connection"]
    assert [(line["host"], line["verdict"]) for line in lines] == [
        ("web.test", "relayed"), ("evil.test", "refused_policy")]
    relayed = lines[0]
    assert relayed["sandbox_id"] == SANDBOX_ID and relayed["port"] == upstream.port
    assert relayed["address"] == "127.0.0.1" and relayed["received"] == len(OK)
    assert relayed["sent"] > 0 and relayed["duration_ms"] >= 0


@pytest.mark.parametrize(
    ("answers", "verdict", "message"),
    [
        (["8.8.8.8", "127.0.0.1"], "refused_address", "loopback"),
        (["::ffff:169.254.169.254"], "refused_address", "metadata"),
        (["fe80::1%eth0"], "refused_address", "link-local"),
        ([], "failed_upstream", "no address"),
    ],
)
async def test_the_resolver_refuses_any_inward_answer(
    answers: list[str], verdict: str, message: str
) -> None:
    async def lookup(host: str, port: int) -> list[str]:
        return answers

    with pytest.raises(Refused) as refused:
        await Resolver({}, 1.0, lookup).addresses("name.test", 443)

    assert refused.value.verdict == verdict and message in refused.value.reason


async def test_the_resolver_gives_global_answers_and_the_operator_map_first() -> None:
    async def lookup(host: str, port: int) -> list[str]:
        return ["8.8.8.8", "8.8.8.8", "2001:4860:4860::8888"]

    resolver = Resolver({"mapped.test": ipaddress.ip_address("127.0.0.1")}, 1.0, lookup)

    assert [str(a) for a in await resolver.addresses("name.test", 443)] == [
        "8.8.8.8", "2001:4860:4860::8888"]
    assert [str(a) for a in await resolver.addresses("mapped.test", 443)] == ["127.0.0.1"]


async def test_a_resolver_that_does_not_answer_in_time_is_a_failure() -> None:
    async def lookup(host: str, port: int) -> list[str]:
        await asyncio.Event().wait()
        return []

    with pytest.raises(Refused, match="no answer in time"):
        await Resolver({}, 0.05, lookup).addresses("slow.test", 443)


async def test_reopening_a_sandbox_gives_it_a_fresh_allowance(tmp_path: Path) -> None:
    async with echo_server() as upstream, proxied(
            tmp_path, f"echo.test:{upstream.port}", "echo.test=127.0.0.1",
            connections_per_s=1) as proxy:
        request = tunnel(f"echo.test:{upstream.port}")
        first = await proxy.head(request)
        refused = await proxy.head(request)
        policy = EgressPolicy.from_text(f"echo.test:{upstream.port}")

        await proxy.proxy.open(SANDBOX_ID, policy, proxy.folder, os.getuid())

        reopened = await proxy.head(request)

    assert first.startswith(b"HTTP/1.1 200") and reopened.startswith(b"HTTP/1.1 200")
    assert refused.startswith(b"HTTP/1.1 429")


async def test_the_operators_list_holds_even_where_a_sandbox_kept_an_older_wider_one(
    tmp_path: Path,
) -> None:
    async with http_server(OK) as upstream, proxied(
            tmp_path, f"web.test:{upstream.port},old.test:{upstream.port}",
            "web.test=127.0.0.1,old.test=127.0.0.1", operator=f"web.test:{upstream.port}") as proxy:
        kept = await proxy.ask(f"GET http://web.test:{upstream.port}/ HTTP/1.1\r\n"
                               "Host: x\r\n\r\n".encode())
        dropped = await proxy.ask(f"GET http://old.test:{upstream.port}/ HTTP/1.1\r\n"
                                  "Host: x\r\n\r\n".encode())

    assert served(kept)
    assert dropped.startswith(b"HTTP/1.1 403")
    assert b"no longer in this server's allow-list (SANDBOX_EGRESS_ALLOW)" in dropped
    assert len(upstream.requests) == 1


async def test_the_server_counts_egress_connections_in_its_metrics(tmp_path: Path) -> None:
    """The container hands its metrics to the runsc runtime's proxy (built, not started)."""
    settings = Settings(runtime="runsc", state_dir=tmp_path / "state", egress_allow="web.test")
    container = Container(settings=settings)
    runtime = container.runtime_adapter()
    assert isinstance(runtime, RunscSandboxRuntime)
    folder = tmp_path / "egress"
    await runtime.egress.open(SANDBOX_ID, EgressPolicy.from_text("web.test"), folder,
                              os.getuid())
    try:
        reader, writer = await asyncio.open_unix_connection(str(folder / SOCKET_NAME))
        writer.write(tunnel("evil.test:443"))
        async with asyncio.timeout(10):
            await reader.read()
        writer.close()
    finally:
        await runtime.egress.close_all()

    text = container.metrics().exposition({}, 0, 0, 0).decode()
    samples = {(found.name, tuple(sorted(found.labels.items()))): found.value
               for family in text_string_to_metric_families(text) for found in family.samples}
    assert samples[("sandbox_egress_connections_total", (("verdict", "refused_policy"),))] == 1
    assert samples[("sandbox_egress_bytes_total", (("direction", "sent"),))] == 0
    assert samples[("sandbox_egress_connection_seconds_count", ())] == 1


@pytest.mark.parametrize(
    ("answer", "tail"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"\r\n\r\nhello"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
         b"chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
         b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"),
    ],
)
async def test_an_answer_ends_the_exchange_even_where_the_server_keeps_the_connection(
    tmp_path: Path, answer: bytes, tail: bytes
) -> None:
    """One request per connection: the client is told so, and gets its end of file when the
    answer is complete, not when a keep-alive server times out."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await reader.read()  # keeps the connection until the proxy closes it
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, proxied(tmp_path, f"web.test:{port}", "web.test=127.0.0.1") as proxy:
        got = await proxy.ask(f"GET http://web.test:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"
                              .encode())
        await proxy.settled()

    assert got.endswith(tail)
    assert got.lower().count(b"connection: close") == 1
    assert proxy.metrics.connections[0][0] == "relayed"


async def test_a_server_that_does_not_answer_http_is_a_502(tmp_path: Path) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, proxied(tmp_path, f"web.test:{port}", "web.test=127.0.0.1") as proxy:
        got = await proxy.ask(f"GET http://web.test:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"
                              .encode())
        await proxy.settled()

    assert got.startswith(b"HTTP/1.1 502 Bad Gateway: the server's answer is not HTTP")
    assert [(verdict, received) for verdict, _sent, received in proxy.metrics.connections] \
        == [("failed_upstream", 0)]


async def test_a_failure_of_the_proxy_itself_ends_that_connection_alone(tmp_path: Path) -> None:
    async def broken(host: str, port: int) -> list[str]:
        raise ZeroDivisionError("a bug")

    async with echo_server() as upstream, proxied(
            tmp_path, f"echo.test:{upstream.port},bug.test", "echo.test=127.0.0.1",
            lookup=broken) as proxy:
        failed = await proxy.ask(tunnel("bug.test:443"))
        after = await proxy.head(tunnel(f"echo.test:{upstream.port}"))
        await proxy.settled()

    assert failed == b""
    assert after.startswith(b"HTTP/1.1 200")
    assert [verdict for verdict, _, _ in proxy.metrics.connections] == ["failed_proxy",
                                                                        "relayed"]
