"""Egress by allow-list on real gVisor: a sandbox reaches the names it is allowed, through the
service's proxy only, and nothing else. Every allowed name maps to 127.0.0.1 through the
operator's map; no test sends traffic beyond the host's loopback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.loopback_servers import Served, echo_server, web_server, wheel_index
from integration.support import (
    managed_sandboxes,
    processes_mentioning,
    require_runsc,
    runtime_settings,
    started_runtime,
    write_bytes,
)
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.lifecycle import contexts
from sandbox.domain.lifecycle.creation import create_session, run_detached
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.execution import run_script
from sandbox.domain.lifecycle.reading import get_sandbox, read_output
from sandbox.domain.lifecycle.reconciliation import reconcile
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.lifecycle.work import exec_in_sandbox
from sandbox.domain.model import (
    ExecutionResult,
    Language,
    Program,
    Sandbox,
    SandboxState,
)
from sandbox.domain.reasons import ReasonCode
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]

LIMITS = dataclasses.replace(Settings().default_limits(), timeout_s=60)
# Asks the relay inside directly, as a client configured with HTTP_PROXY would.
ASK = '''
import socket
def ask(request, then=b""):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
    s.sendall(request)
    head = b""
    while not head.endswith(b"\\r\\n\\r\\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return s, head
def connect(authority):
    return ask(f"CONNECT {authority} HTTP/1.1\\r\\nHost: {authority}\\r\\n\\r\\n".encode())
'''


@pytest.fixture
def web() -> Iterator[Served]:
    with web_server() as served:
        yield served


@pytest.fixture
def echo() -> Iterator[Served]:
    with echo_server() as served:
        yield served


@pytest.fixture
def wheels(tmp_path: Path) -> Iterator[Served]:
    folder = tmp_path / "index"
    folder.mkdir()
    with wheel_index(folder, "tinyegress", "through the proxy") as served:
        yield served


@pytest.fixture
def egress_caps() -> dict[str, Any]:
    """Caps a test may override with parametrize."""
    return {}


@pytest.fixture
def settings(
    tmp_path: Path, web: Served, echo: Served, wheels: Served, egress_caps: dict[str, Any]
) -> Settings:
    require_runsc()
    allow = (f"web.test:{web.port},echo.test:{echo.port},wheels.test:{wheels.port},"
             f"localhost:{echo.port}")
    hosts = "web.test=127.0.0.1,echo.test=127.0.0.1,wheels.test=127.0.0.1"
    return runtime_settings(tmp_path / "state", egress_allow=allow, egress_hosts=hosts,
                            **egress_caps)


def everything(web: Served, echo: Served, wheels: Served) -> tuple[str, ...]:
    return (f"web.test:{web.port}", f"echo.test:{echo.port}", f"wheels.test:{wheels.port}",
            f"localhost:{echo.port}")


@contextlib.asynccontextmanager
async def session(
    sandboxes: Sandboxes, allow: tuple[str, ...]
) -> AsyncIterator[Sandbox]:
    sandbox = await create_session(sandboxes, Language.PYTHON, LIMITS, network_allow=allow)
    try:
        yield sandbox
    finally:
        await delete_sandbox(sandboxes, sandbox.sandbox_id)


async def python(sandboxes: Sandboxes, sandbox: Sandbox, code: str,
                 timeout_s: float = 60) -> ExecutionResult:
    result = await exec_in_sandbox(sandboxes, sandbox.sandbox_id,
                                Program.script(Language.PYTHON, code.encode()), b"", timeout_s)
    assert result.outcome.exit_code == 0, result.stderr.text
    return result


async def test_an_allowed_name_is_served_through_the_proxy(
    sandboxes: Sandboxes, web: Served, echo: Served, wheels: Served
) -> None:
    code = ASK + f'''
import os, urllib.request
print(os.environ["HTTP_PROXY"], os.environ["HTTPS_PROXY"])
print(urllib.request.urlopen("http://web.test:{web.port}/hello", timeout=30).read().decode(),
      end="")
s, head = connect("echo.test:{echo.port}")
s.sendall(b"ping")
print(head.split(b"\\r\\n")[0].decode(), s.recv(4).decode())
'''
    async with session(sandboxes, everything(web, echo, wheels)) as sandbox:
        result = await python(sandboxes, sandbox, code)

    assert result.stdout.text.splitlines() == [
        "http://127.0.0.1:3128 http://127.0.0.1:3128",
        f"hello from web.test:{web.port} /hello",
        "HTTP/1.1 200 Connection established ping",
    ]


async def test_a_code_context_reaches_an_allowed_name_before_and_after_a_restore(
    sandboxes: Sandboxes, web: Served, echo: Served, wheels: Served
) -> None:
    # A context's interpreter is started by the agent with the sandbox's environment, so it
    # has the proxy's variables; the relay it talks to comes back with a restore.
    fetch = f'urllib.request.urlopen("http://web.test:{web.port}/cell", timeout=30).read()'
    answers = []
    async with session(sandboxes, everything(web, echo, wheels)) as sandbox:
        context = await contexts.create_context(sandboxes, sandbox.sandbox_id, Language.PYTHON)
        ids = (sandbox.sandbox_id, context.context_id)
        answers.append(await contexts.run_cell(sandboxes, *ids,
                                               f"import urllib.request\n{fetch}", None))
        await suspend_sandbox(sandboxes, sandbox.sandbox_id)
        await restore_sandbox(sandboxes, sandbox.sandbox_id)
        answers.append(await contexts.run_cell(sandboxes, *ids, fetch, None))

    assert [answer.error for answer in answers] == [None, None]
    assert [[result.data["text/plain"] for result in answer.results] for answer in answers] \
        == [[repr(f"hello from web.test:{web.port} /cell\n".encode())]] * 2


async def test_a_name_not_in_the_allow_list_is_refused_by_the_proxy_with_a_clear_message(
    sandboxes: Sandboxes, web: Served, echo: Served, wheels: Served
) -> None:
    code = f'''
import urllib.error, urllib.request
for url in ("http://evil.test/", "https://evil.test/", "http://web.test:{web.port + 1}/"):
    try:
        urllib.request.urlopen(url, timeout=30)
    except urllib.error.HTTPError as error:
        print(error.code, error.read().decode().strip())
    except urllib.error.URLError as error:
        print(error.reason)
'''
    async with session(sandboxes, (f"web.test:{web.port}",)) as sandbox:
        result = await python(sandboxes, sandbox, code)

    lines = result.stdout.text.splitlines()
    allowed = f"(web.test:{web.port})"
    assert lines[0] == ("403 sandbox egress proxy: evil.test:80 is not in this sandbox's "
                        f"allow-list {allowed}")
    assert lines[1] == ("Tunnel connection failed: 403 Forbidden: evil.test:443 is not in this "
                        f"sandbox's allow-list {allowed}")
    assert lines[2].startswith(f"403 sandbox egress proxy: web.test:{web.port + 1} is not in")
    assert web.paths == []


async def test_an_ip_literal_is_refused_even_a_metadata_address(
    sandboxes: Sandboxes, web: Served, echo: Served, wheels: Served
) -> None:
    code = ASK + '''
for authority in ("10.0.0.1:443", "169.254.169.254:80", "[fd00:ec2::254]:80", "8.8.8.8:443"):
    s, head = connect(authority)
    print(head.split(b"\\r\\n")[0].decode())
'''
    async with session(sandboxes, everything(web, echo, wheels)) as sandbox:
        result = await python(sandboxes, sandbox, code)

    lines = result.stdout.text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["HTTP/1.1 403 Forbidden"] * 4
    assert all("is an IP address; egress goes to host names only" in line for line in lines)


async def test_an_allowed_name_that_resolves_inward_is_refused_without_the_operators_map(
    sandboxes: Sandboxes, web: Served, echo: Served, wheels: Served
) -> None:
    code = ASK + f'''
s, head = connect("localhost:{echo.port}")
print(head.split(b"\\r\\n")[0].decode())
'''
    async with session(sandboxes, everything(web, echo, wheels)) as sandbox:
        result = await python(sandboxes, sandbox, code)

    line = result.stdout.text.strip()
    assert line.startswith("HTTP/1.1 403 Forbidden: localhost resolves to ")
    assert line.endswith("loopback: refused")
    assert echo.connections == 0


async def test_a_redirect_to_a_name_not_allowed_is_refused(
    sandboxes: Sandboxes, web: Served, echo: Served, wheels: Served
) -> None:
    code = f'''
import urllib.error, urllib.request
try:
    urllib.request.urlopen("http://web.test:{web.port}/redirect", timeout=30)
except urllib.error.HTTPError as error:
    print(error.code, error.url, error.read().decode().strip())
'''
    async with session(sandboxes, everything(web, echo, wheels)) as sandbox:
        result = await python(sandboxes, sandbox, code)

    assert result.stdout.text.startswith(
        "403 http://evil.test/ sandbox egress proxy: evil.test:80 is not in this sandbox's")
    assert web.paths == ["/redirect"]


async def test_dns_from_inside_fails_with_egress_on(
    sandboxes: Sandboxes, web: Served, echo: Served, wheels: Served
) -> None:
    code = f'''
import socket
for name in ("web.test", "localhost.localdomain"):
    try:
        print(socket.getaddrinfo(name, {web.port}))
    except socket.gaierror as error:
        print("no dns:", error.errno in (socket.EAI_NONAME, socket.EAI_AGAIN, socket.EAI_FAIL))
'''
    async with session(sandboxes, everything(web, echo, wheels)) as sandbox:
        result = await python(sandboxes, sandbox, code)

    assert result.stdout.text == "no dns: True\nno dns: True\n"


async def test_the_proxy_socket_is_out_of_reach_of_the_sandbox_user_and_the_relay_is_powerless(
    sandboxes: Sandboxes, web: Served, echo: Served, wheels: Served
) -> None:
    code = '''
import os, socket
try:
    os.listdir("/sandbox/egress")
except PermissionError as error:
    print("list:", error.strerror)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("/sandbox/egress/proxy.sock")
except PermissionError as error:
    print("connect:", error.strerror)
for pid in os.listdir("/proc"):
    if pid.isdigit() and b"relay.py" in open(f"/proc/{pid}/cmdline", "rb").read():
        lines = open(f"/proc/{pid}/status").read().splitlines()
        status = dict(line.split(":\\t", 1) for line in lines if ":\\t" in line)
        print("relay:", status["Uid"].split()[0], status["Gid"].split()[0], status["CapEff"],
              status["CapBnd"] != status["CapEff"])
'''
    async with session(sandboxes, everything(web, echo, wheels)) as sandbox:
        result = await python(sandboxes, sandbox, code)

    assert result.stdout.text.splitlines() == [
        "list: Permission denied", "connect: Permission denied",
        "relay: 999 999 0000000000000000 True"]


async def test_a_sandbox_without_an_allow_list_has_no_way_out_at_all(
    sandboxes: Sandboxes, runtime: RunscSandboxRuntime, web: Served, echo: Served,
    wheels: Served,
) -> None:
    code = f'''
import os, socket, urllib.error, urllib.request
print(sorted(name for name in os.environ if "proxy" in name.lower()))
try:
    socket.create_connection(("127.0.0.1", 3128), timeout=10)
except OSError as error:
    print("relay:", error.strerror)
try:
    urllib.request.urlopen("http://web.test:{web.port}/", timeout=10)
except urllib.error.URLError as error:
    print("web:", type(error.reason).__name__)
try:
    socket.create_connection(("127.0.0.1", {web.port}), timeout=10)
except OSError as error:
    print("host loopback:", error.strerror)
'''
    async with session(sandboxes, ()) as sandbox:
        result = await python(sandboxes, sandbox, code)
        commands = processes_mentioning(sandbox.sandbox_id)

    assert result.stdout.text.splitlines() == [
        "[]", "relay: Connection refused", "web: gaierror", "host loopback: Connection refused"]
    assert commands and not [line for line in commands if "host-uds" in line]
    assert runtime.egress.listening() == set()
    assert web.paths == []


@pytest.mark.parametrize("egress_caps", [{"egress_max_connections": 3}])
async def test_a_flood_of_open_connections_hits_the_cap(
    sandboxes: Sandboxes, web: Served, echo: Served, wheels: Served
) -> None:
    code = ASK + f'''
held = [connect("echo.test:{echo.port}") for _ in range(8)]
print([head.split(b" ")[1].decode() for s, head in held])
print(held[-1][1].split(b"\\r\\n")[0].decode())
'''
    async with session(sandboxes, everything(web, echo, wheels)) as sandbox:
        result = await python(sandboxes, sandbox, code)

    statuses, last = result.stdout.text.splitlines()
    assert statuses == str(["200"] * 3 + ["429"] * 5)
    assert last == ("HTTP/1.1 429 Too Many Requests: this sandbox has 3 egress connections "
                    "open, the most allowed (3)")


@pytest.mark.parametrize("egress_caps", [{"egress_connections_per_s": 0.01}])
async def test_a_flood_of_new_connections_hits_the_rate_cap(
    sandboxes: Sandboxes, web: Served, echo: Served, wheels: Served
) -> None:
    code = ASK + f'''
statuses = []
for _ in range(6):
    s, head = connect("echo.test:{echo.port}")
    statuses.append(head.split(b" ")[1].decode())
    s.close()
print(statuses, head.split(b"\\r\\n")[0].decode())
'''
    async with session(sandboxes, everything(web, echo, wheels)) as sandbox:
        result = await python(sandboxes, sandbox, code)

    assert result.stdout.text.strip() == (
        str(["200"] + ["429"] * 5) + " HTTP/1.1 429 Too Many Requests: this sandbox opens "
        "egress connections faster than the 0.01 a second allowed")


@pytest.mark.parametrize("egress_caps", [{"egress_max_bytes": 4096}])
async def test_a_sandbox_past_its_byte_allowance_is_cut_off(
    sandboxes: Sandboxes, web: Served, echo: Served, wheels: Served
) -> None:
    code = ASK + f'''
s, head = connect("echo.test:{echo.port}")
echoed = 0
try:
    for _ in range(10):
        s.sendall(b"x" * 1000)
        got = s.recv(1000)
        if not got:
            break
        echoed += len(got)
except OSError:
    pass
print(echoed < 10000, connect("echo.test:{echo.port}")[1].split(b"\\r\\n")[0].decode())
'''
    async with session(sandboxes, everything(web, echo, wheels)) as sandbox:
        result = await python(sandboxes, sandbox, code)

    assert result.stdout.text.strip() == (
        "True HTTP/1.1 429 Too Many Requests: this sandbox has used its egress allowance of "
        "4096 bytes each way")


HOLDER = ASK + '''
import sys, time
port = int(sys.argv[1]) if len(sys.argv) > 1 else PORT
s, head = connect(f"echo.test:{port}")
n = 0
while True:
    n += 1
    try:
        s.sendall(b"ping %d\\n" % n)
        if not s.recv(100):
            raise OSError("closed by the proxy")
        print("echo", n, flush=True)
    except OSError as error:
        print("interrupted:", error, flush=True)
        s, head = connect(f"echo.test:{port}")
        print("reconnected:", head.split(b"\\r\\n")[0].decode(), flush=True)
    time.sleep(0.2)
'''


async def output_until(sandboxes: Sandboxes, sandbox_id: str, text: str) -> str:
    """The detached script's output once it holds `text` (bounded wait)."""
    async with asyncio.timeout(60):
        while True:
            _sandbox, stdout, stderr = await read_output(sandboxes, sandbox_id)
            if text in stdout.data.decode():
                return stdout.data.decode()
            assert not stderr.data, stderr.data.decode()
            await asyncio.sleep(0.1)


async def test_suspend_with_an_open_egress_connection_works_and_restore_brings_the_proxy_back(
    sandboxes: Sandboxes, runtime: RunscSandboxRuntime, web: Served, echo: Served,
    wheels: Served,
) -> None:
    source = HOLDER.replace("PORT", str(echo.port)).encode()
    sandbox = await run_detached(sandboxes, Language.PYTHON, source, LIMITS,
                                         network_allow=everything(web, echo, wheels))
    try:
        await output_until(sandboxes, sandbox.sandbox_id, "echo 2\n")
        assert runtime.egress.connections(sandbox.sandbox_id) == 1

        suspended = await suspend_sandbox(sandboxes, sandbox.sandbox_id)
        assert runtime.egress.listening() == set()
        restored = await restore_sandbox(sandboxes, sandbox.sandbox_id)
        output = await output_until(sandboxes, sandbox.sandbox_id, "reconnected:")
        after = await output_until(sandboxes, sandbox.sandbox_id,
                                   f"echo {output.count(chr(10)) + 2}\n")
    finally:
        await delete_sandbox(sandboxes, sandbox.sandbox_id)

    assert suspended.state.value == "suspended" and restored.state.value == "running"
    assert restored.network_allow == everything(web, echo, wheels)
    assert "interrupted: closed by the proxy" in output or "interrupted: [Errno" in output
    assert "reconnected: HTTP/1.1 200 Connection established" in after
    assert echo.connections == 2


async def test_after_a_crash_an_egress_session_holding_a_connection_is_suspended_and_restored(
    runtime: RunscSandboxRuntime, settings: Settings, web: Served, echo: Served, wheels: Served
) -> None:
    """Nobody pauses the relay after a crash: it must have let go of the connections whose
    proxy end died with the server, or the checkpoint that reconcile makes fails."""
    holder = ASK + f'kept = connect("echo.test:{echo.port}")\nimport time\ntime.sleep(600)\n'
    daemon = b"setsid python3 /workspace/holder.py >/tmp/holder.log 2>&1 &\n"
    crashing = dataclasses.replace(settings.lifecycle_policy(),
                                   suspend_on_shutdown=False)
    async with managed_sandboxes(runtime, settings, crashing) as before:
        session = await create_session(before, Language.PYTHON, LIMITS,
                                              network_allow=everything(web, echo, wheels))
        await write_bytes(before, session.sandbox_id, "/workspace/holder.py", holder.encode())
        await exec_in_sandbox(before, session.sandbox_id,
                              Program.script(Language.BASH, daemon), b"", 30)
        async with asyncio.timeout(30):
            while echo.open_connections != 1:  # noqa: ASYNC110 (a count the server keeps)
                await asyncio.sleep(0.05)
    await runtime.close()

    async with started_runtime(settings) as restarted, \
            managed_sandboxes(restarted, settings) as after:
        await reconcile(after)
        suspended = await get_sandbox(after, session.sandbox_id)
        await restore_sandbox(after, session.sandbox_id)
        served = await python(after, await get_sandbox(after, session.sandbox_id), f'''
import urllib.request
print(urllib.request.urlopen("http://web.test:{web.port}/again", timeout=30).read().decode())
''')
        await delete_sandbox(after, session.sandbox_id)

    assert (suspended.state, suspended.reason_code) == (SandboxState.SUSPENDED,
                                                        ReasonCode.SERVER_RESTARTED)
    assert served.stdout.text == f"hello from web.test:{web.port} /again\n\n"


async def test_pip_installs_from_an_index_the_allow_list_names(
    sandboxes: Sandboxes, web: Served, echo: Served, wheels: Served
) -> None:
    index = f"wheels.test:{wheels.port}"
    install = Program(language=None, argv=(
        "python3", "-m", "pip", "install", "--disable-pip-version-check", "--no-cache-dir",
        "--index-url", f"http://{index}/simple/", "--trusted-host", index,
        "--target", "/tmp/packages", "tinyegress"))
    check = "import sys; sys.path.insert(0, '/tmp/packages'); import tinyegress\n" \
            "print(tinyegress.VALUE)\n"

    async with session(sandboxes, (index,)) as sandbox:
        installed = await exec_in_sandbox(sandboxes, sandbox.sandbox_id, install, b"", 180)
        result = await python(sandboxes, sandbox, check)

    assert installed.outcome.exit_code == 0, installed.stdout.text + installed.stderr.text
    assert "Successfully installed tinyegress-1.0" in installed.stdout.text
    assert result.stdout.text == "through the proxy\n"
    assert "/simple/tinyegress/" in wheels.paths
    assert "/tinyegress-1.0-py3-none-any.whl" in wheels.paths


async def test_delete_leaves_no_socket_listener_task_or_connection(
    sandboxes: Sandboxes, runtime: RunscSandboxRuntime, settings: Settings, web: Served,
    echo: Served, wheels: Served,
) -> None:
    source = HOLDER.replace("PORT", str(echo.port)).encode()
    sandbox = await run_detached(sandboxes, Language.PYTHON, source, LIMITS,
                                         network_allow=everything(web, echo, wheels))
    await output_until(sandboxes, sandbox.sandbox_id, "echo 1\n")
    folder = settings.state_dir / "bundles" / sandbox.sandbox_id / "egress"
    assert (folder / "proxy.sock").exists()

    await delete_sandbox(sandboxes, sandbox.sandbox_id)

    assert runtime.egress.listening() == set()
    assert runtime.egress.connections(sandbox.sandbox_id) == 0
    assert not folder.exists()
    assert not [task for task in asyncio.all_tasks() if "egress" in repr(task.get_coro())]
    async with asyncio.timeout(10):
        while echo.open_connections:  # noqa: ASYNC110 (a count the server thread keeps)
            await asyncio.sleep(0.05)


async def test_a_one_shot_script_with_an_allow_list_is_served_and_leaves_nothing(
    runtime: RunscSandboxRuntime, settings: Settings, web: Served, echo: Served, wheels: Served
) -> None:
    code = f'''
import urllib.request
print(urllib.request.urlopen("http://web.test:{web.port}/once", timeout=30).read().decode())
'''
    mount_points = sorted((path, path.stat().st_mode)
                          for path in (settings.rootfs_dir / "sandbox").rglob("*"))
    started = time.monotonic()

    result = await run_script(runtime, Language.PYTHON, code.encode(), LIMITS,
                              network_allow=(f"web.test:{web.port}",))

    assert result.outcome.exit_code == 0, result.stderr.text
    assert result.stdout.text == f"hello from web.test:{web.port} /once\n\n"
    assert 0 < result.outcome.duration_ms <= (time.monotonic() - started) * 1000 + 1
    assert runtime.egress.listening() == set()
    assert sorted((path, path.stat().st_mode) for path in
                  (settings.rootfs_dir / "sandbox").rglob("*")) == mount_points


async def test_a_one_shot_script_past_its_time_with_an_allow_list_is_timed_out_and_gone(
    runtime: RunscSandboxRuntime, web: Served, echo: Served, wheels: Served
) -> None:
    result = await run_script(runtime, Language.PYTHON, b"import time\ntime.sleep(60)\n",
                              dataclasses.replace(LIMITS, timeout_s=2),
                              network_allow=(f"web.test:{web.port}",))

    assert (result.outcome.exit_code, result.outcome.timed_out) == (None, True)
    assert runtime.egress.listening() == set()
