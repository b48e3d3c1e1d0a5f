"""A sandbox sees nothing of the host: not its user, files, environment, network or disk."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import pytest

from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.lifecycle.execution import run_script
from sandbox.domain.model import Language, Limits
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]

REPOSITORY = Path(__file__).resolve().parents[2]


async def test_the_script_runs_as_uid_1000_not_root(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = b"import os\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getegid())\n"

    result = await run_script(runtime, Language.PYTHON, source, limits)

    assert result.stdout.text == "1000 1000 1000 1000\n"


async def test_the_working_directory_is_workspace(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    result = await run_script(runtime, Language.BASH, b"pwd", limits)

    assert result.stdout.text == "/workspace\n"


async def test_the_script_has_no_capabilities(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = b"grep -E '^Cap(Inh|Prm|Eff|Bnd)' /proc/self/status"

    result = await run_script(runtime, Language.BASH, source, limits)

    capabilities = dict(line.split(":\t") for line in result.stdout.text.splitlines())
    assert capabilities == dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapBnd"), "0" * 16)


async def test_no_new_privileges_is_set(runtime: RunscSandboxRuntime, limits: Limits) -> None:
    # gVisor's /proc/self/status has no NoNewPrivs line; ask the kernel directly.
    pr_get_no_new_privs = 39
    source = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"print(libc.prctl({pr_get_no_new_privs}, 0, 0, 0, 0))\n"
    ).encode()

    result = await run_script(runtime, Language.PYTHON, source, limits)

    assert result.stdout.text == "1\n"


async def test_this_repository_is_not_visible_inside(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    paths = [str(REPOSITORY), str(REPOSITORY / "pyproject.toml"), "/work"]
    source = f"import os\nfor path in {paths!r}:\n    print(path, os.path.exists(path))\n"

    result = await run_script(runtime, Language.PYTHON, source.encode(), limits)

    assert result.stdout.text == "".join(f"{path} False\n" for path in paths)


async def test_a_file_on_the_host_cannot_be_found_from_inside(
    runtime: RunscSandboxRuntime, limits: Limits, tmp_path: Path
) -> None:
    marker = f"marker-{secrets.token_hex(8)}"
    (tmp_path / marker).write_text("host only")
    # The script itself is found, which shows the search reaches every mounted folder.
    source = (
        "timeout 20 find / \\( -path /proc -o -path /sys \\) -prune"
        f" -o \\( -name {marker} -o -name main.sh \\) -print 2>/dev/null\n"
        "echo find exit $?\n"
    )

    result = await run_script(runtime, Language.BASH, source.encode(), limits)

    found, status = result.stdout.text.splitlines()[:-1], result.stdout.text.splitlines()[-1]
    assert found == ["/sandbox/input/main.sh"]
    # 1: some folders (/root) are closed to the sandbox user; 124 would mean find timed out.
    assert status in ("find exit 0", "find exit 1")


async def test_hostname_and_resolv_conf_are_empty(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = b"wc -c < /etc/hostname\nwc -c < /etc/resolv.conf\n"

    result = await run_script(runtime, Language.BASH, source, limits)

    assert result.stdout.text == "0\n0\n"


async def test_the_server_environment_does_not_leak(
    runtime: RunscSandboxRuntime, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, value = f"SANDBOX_TEST_CANARY_{secrets.token_hex(4)}", secrets.token_hex(16)
    monkeypatch.setenv(name, value)

    result = await run_script(runtime, Language.BASH, b"env", limits)

    names = {line.partition("=")[0] for line in result.stdout.text.splitlines()}
    assert "PATH" in names
    assert name not in names
    assert value not in result.stdout.text
    # pytest sets this in the test process; the sandbox must not inherit it either.
    assert "PYTEST_CURRENT_TEST" in os.environ
    assert "PYTEST_CURRENT_TEST" not in names


async def test_only_loopback_exists_inside(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = (
        b"import socket\n"
        b"print(socket.if_nameindex())\n"
        b"print([line.split(':')[0].strip() for line in open('/proc/net/dev')][2:])\n"
    )

    result = await run_script(runtime, Language.PYTHON, source, limits)

    assert result.stdout.text == "[(1, 'lo')]\n['lo']\n"


CONNECT = """
import errno, socket
s = socket.socket()
s.settimeout(2)
try:
    s.connect(({host!r}, {port}))
    print("connected")
except socket.timeout:
    print("timeout")
except OSError as error:
    print(errno.errorcode[error.errno])
"""


async def test_a_server_on_the_host_loopback_is_unreachable(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    connections = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
        source = CONNECT.format(host="127.0.0.1", port=port)

        result = await run_script(runtime, Language.PYTHON, source.encode(), limits)

    assert result.stdout.text == "ECONNREFUSED\n"
    assert len(connections) == 1  # only the host's own check got through


async def test_the_cloud_metadata_server_is_unreachable_at_once(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = CONNECT.format(host="169.254.169.254", port=80)

    result = await run_script(runtime, Language.PYTHON, source.encode(), limits)

    # Refused by the sandbox's own stack, not after the 2 s socket timeout.
    assert result.stdout.text in ("ENETUNREACH\n", "EHOSTUNREACH\n")


async def test_dns_resolution_fails(runtime: RunscSandboxRuntime, limits: Limits) -> None:
    source = (
        b"import socket\n"
        b"try:\n"
        b"    print(socket.getaddrinfo('example.com', 443))\n"
        b"except socket.gaierror as error:\n"
        b"    print('gaierror')\n"
    )

    result = await run_script(runtime, Language.PYTHON, source, limits)

    assert result.stdout.text == "gaierror\n"


WRITE_EVERYWHERE = """
import pathlib
for path in {paths!r}:
    try:
        pathlib.Path(path).write_text("left behind")
        print("wrote", path)
    except OSError as error:
        print("refused", path, type(error).__name__)
"""
LOOK_EVERYWHERE = """
import os
for path in {paths!r}:
    print(path, os.path.exists(path))
"""
ROOTFS_FOLDERS = ("", "tmp", "workspace", "usr/lib", "etc")


def _listing(rootfs: Path) -> dict[str, tuple[int, int]]:
    """Names, sizes and modification times of a few rootfs folders and their entries."""
    listing = {}
    for folder in ROOTFS_FOLDERS:
        for path in [rootfs / folder, *(rootfs / folder).iterdir()]:
            stat = path.lstat()
            listing[str(path.relative_to(rootfs))] = (stat.st_size, stat.st_mtime_ns)
    return listing


async def test_a_second_sandbox_sees_nothing_the_first_wrote(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    name = f"written-{secrets.token_hex(6)}"
    paths = [f"/{name}", f"/tmp/{name}", f"/workspace/{name}", f"/usr/lib/{name}"]

    written = await run_script(
        runtime, Language.PYTHON, WRITE_EVERYWHERE.format(paths=paths).encode(), limits
    )
    seen = await run_script(
        runtime, Language.PYTHON, LOOK_EVERYWHERE.format(paths=paths).encode(), limits
    )

    # The sandbox user may write its workspace (part of the root overlay) and /tmp only.
    assert written.stdout.text == (
        f"refused /{name} PermissionError\n"
        f"wrote /tmp/{name}\n"
        f"wrote /workspace/{name}\n"
        f"refused /usr/lib/{name} PermissionError\n"
    )
    assert seen.stdout.text == "".join(f"{path} False\n" for path in paths)


async def test_the_rootfs_folder_is_unchanged_by_a_writing_sandbox(
    runtime: RunscSandboxRuntime, limits: Limits, settings: Settings
) -> None:
    rootfs = settings.rootfs_dir
    name = f"written-{secrets.token_hex(6)}"
    paths = [f"/{name}", f"/tmp/{name}", f"/workspace/{name}", f"/usr/lib/{name}"]
    before = _listing(rootfs)

    result = await run_script(
        runtime, Language.PYTHON, WRITE_EVERYWHERE.format(paths=paths).encode(), limits
    )

    assert f"wrote /workspace/{name}\n" in result.stdout.text
    assert [path for path in paths if (rootfs / path.lstrip("/")).exists()] == []
    assert _listing(rootfs) == before
