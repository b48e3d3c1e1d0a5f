"""Hostile code on real gVisor: each attack ends with its exact verdict, the host stays fine,
and nothing is left behind (the leak check runs after every test).

This extends test_runsc_limits.py and test_runsc_isolation.py, which already cover: a Python
infinite loop, a script ignoring SIGTERM, a memory bomb, sequential output floods and a 5 MB
line, `(sleep &)` and nohup daemons, forking at the process limit, a fork bomb at pids=64,
open files at the open-files limit, `env` without the server's variables, the repository and
host files out of sight, DNS, the host loopback over TCP, the metadata server, lo as the only
interface, and files written by one sandbox unseen by the next.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from integration.support import processes_mentioning
from sandbox.adapters.runsc import cgroups
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle.execution import run_script
from sandbox.domain.model import (
    IDLE,
    ExecutionResult,
    Language,
    Limits,
    Program,
    SandboxSpec,
    Stream,
)
from sandbox.domain.output import OutputCapture
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]

# Generous upper bounds that only catch a hang; runs take a fraction of these.
HANG_MS = 60_000
MIB = 1024 * 1024
REPOSITORY = Path(__file__).resolve().parents[2]
CGROUP_ROOT = Path("/sys/fs/cgroup")


async def run(
    runtime: RunscSandboxRuntime, language: Language, source: str, limits: Limits, **changes: int
) -> ExecutionResult:
    return await run_script(
        runtime, language, source.encode(), dataclasses.replace(limits, **changes)
    )


@dataclasses.dataclass
class Session:
    """A long-lived sandbox on the runtime itself, with the service's idle init."""

    runtime: RunscSandboxRuntime
    sandbox_id: str

    async def exec(self, language: Language, source: str, timeout_s: float = 20) -> ExecutionResult:
        capture = OutputCapture(MIB)
        outcome = await self.runtime.exec(
            self.sandbox_id, Program.script(language, source.encode()), capture, b"", timeout_s
        )
        await capture.close()
        return ExecutionResult(
            sandbox_id=self.sandbox_id, language=language.value, outcome=outcome,
            stdout=capture.captured(Stream.STDOUT), stderr=capture.captured(Stream.STDERR),
        )


@pytest.fixture
async def session(runtime: RunscSandboxRuntime, limits: Limits) -> AsyncIterator[Session]:
    sandbox_id = new_sandbox_id()
    spec = SandboxSpec(sandbox_id=sandbox_id, limits=dataclasses.replace(limits, memory_mb=1024))
    await runtime.launch(spec, IDLE, OutputCapture(MIB))
    try:
        yield Session(runtime, sandbox_id)
    finally:
        await runtime.destroy(sandbox_id)


@pytest.fixture
async def host_sleeper() -> AsyncIterator[tuple[int, str]]:
    """A process of the host's own, with a unique argument: (its pid, that argument)."""
    marker = f"{secrets.randbelow(10**6) + 10**6}.{secrets.randbelow(10**6)}"
    process = await asyncio.create_subprocess_exec("sleep", marker)
    try:
        yield process.pid, marker
    finally:
        process.kill()
        await process.wait()


# Time and CPU -----------------------------------------------------------------------------


async def test_a_bash_busy_loop_ignoring_term_int_and_hup_is_ended_at_the_timeout(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = "trap '' TERM INT HUP\necho armed\nwhile :; do :; done\n"

    result = await run(runtime, Language.BASH, source, limits, timeout_s=1)

    assert (result.outcome.timed_out, result.outcome.exit_code) == (True, None)
    assert result.stdout.text == "armed\n"
    assert result.outcome.duration_ms < HANG_MS


def _sandbox_cpu_files(parent: str) -> tuple[Path, Path]:
    """The CPU quota and usage counter of the one sandbox cgroup runsc made under `parent`."""
    v1_quota = sorted((CGROUP_ROOT / "cpu" / parent).glob("*/sandbox/cpu.cfs_quota_us"))
    if v1_quota:
        usage = sorted((CGROUP_ROOT / "cpuacct" / parent).glob("*/sandbox/cpuacct.usage"))
        return v1_quota[0], usage[0]
    v2_quota = sorted((CGROUP_ROOT / parent).glob("*/sandbox/cpu.max"))
    return v2_quota[0], v2_quota[0].with_name("cpu.stat")


def _cpu_seconds(usage: Path) -> float:
    text = usage.read_text()
    if usage.name == "cpu.stat":
        return int(dict(line.split() for line in text.splitlines())["usage_usec"]) / 1e6
    return int(text) / 1e9


@pytest.mark.slow
async def test_sixteen_busy_loops_get_one_cpu_and_end_at_the_timeout_while_the_host_answers(
    runtime: RunscSandboxRuntime, limits: Limits, settings: Settings
) -> None:
    source = "for i in $(seq 16); do while :; do :; done & done\necho burning\nwait\n"
    gaps: list[float] = []
    used: list[tuple[str, float]] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def measure() -> None:
        await asyncio.sleep(1.5)
        quota, usage = _sandbox_cpu_files(settings.cgroup_parent)
        before, started = _cpu_seconds(usage), time.monotonic()
        await asyncio.sleep(1.0)
        used.append((quota.read_text().split()[0],
                     (_cpu_seconds(usage) - before) / (time.monotonic() - started)))

    ticker, meter = asyncio.create_task(tick()), asyncio.create_task(measure())
    try:
        result = await run(runtime, Language.BASH, source, limits, timeout_s=4)
        await meter
    finally:
        ticker.cancel()
        meter.cancel()

    assert (result.outcome.timed_out, result.outcome.exit_code) == (True, None)
    assert result.stdout.text == "burning\n"
    [(quota, cpus_used)] = used
    assert quota == "100000"  # one CPU per 100 ms period (limits.cpus == 1)
    assert cpus_used < 1.5  # sixteen loops, one CPU's worth (this host has two)
    # The test's own event loop kept answering throughout (it ticks every 50 ms).
    assert len(gaps) > 40
    assert max(gaps) < 2.0


# Processes and threads ------------------------------------------------------------------


@pytest.mark.slow
async def test_the_classic_fork_bomb_is_ended_at_the_timeout_and_the_next_sandbox_runs(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    # The loop goes on even when it cannot fork, so only the timeout ends this script. (Its
    # "Resource temporarily unavailable" shows once the bomb reaches the process limit, which
    # on a loaded host may take longer than the timeout: it is not asserted.)
    bomb = ":(){ :|:& };:\nwhile :; do sleep 1; done\n"

    bombed = await run(runtime, Language.BASH, bomb, limits, timeout_s=10)
    after = await run(runtime, Language.BASH, "echo fine", limits)

    assert (bombed.outcome.timed_out, bombed.outcome.exit_code) == (True, None)
    assert bombed.outcome.duration_ms < HANG_MS
    assert (after.outcome.exit_code, after.stdout.text) == (0, "fine\n")


THREAD_BOMB = """
import threading, time
threads = []
try:
    while len(threads) < 100_000:
        thread = threading.Thread(target=time.sleep, args=(60,), daemon=True)
        thread.start()
        threads.append(thread)
except RuntimeError:
    print(len(threads))
    raise
"""


async def test_a_thread_bomb_fails_at_the_process_limit_and_the_next_sandbox_runs(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    bombed = await run(runtime, Language.PYTHON, THREAD_BOMB, limits, pids=256)
    after = await run(runtime, Language.BASH, "echo fine", limits)

    assert bombed.outcome.exit_code == 1
    assert bombed.stderr.text.endswith("RuntimeError: can't start new thread\n")
    # RLIMIT_NPROC counts threads: the main thread and 255 more make 256.
    assert bombed.stdout.text == "255\n"
    assert (after.outcome.exit_code, after.stdout.text) == (0, "fine\n")


LIST_PROCESSES = """
import os, time
def processes():
    found = []
    for pid in sorted(int(name) for name in os.listdir("/proc") if name.isdigit()):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\\0", b" ").decode().strip()
        except FileNotFoundError:
            continue
        found.append(f"{state} {command}")
    return found
# Orphaned sleeps of 0.1 s end first (a bound against a slow host, not a timing claim).
for _ in range(100):
    if "S sleep 0.1" not in processes():
        break
    time.sleep(0.1)
print("\\n".join(processes()))
"""


@pytest.mark.slow
async def test_a_fork_bomb_in_a_session_exec_ends_with_it_and_the_session_answers_after(
    session: Session,
) -> None:
    """An exec is its process group's leader: at its timeout the whole group goes, so the
    bomb's children do not hold the user's process limit and the session stays usable."""
    bomb = ":(){ :|:& };:\nwhile :; do sleep 1; done\n"

    bombed = await session.exec(Language.BASH, bomb, timeout_s=5)
    after = await session.exec(Language.PYTHON, LIST_PROCESSES)

    assert (bombed.outcome.timed_out, bombed.outcome.exit_code) == (True, None)
    assert bombed.outcome.duration_ms < HANG_MS
    assert after.outcome.exit_code == 0
    # The agent, the zygote and the listing (forked from it): no bomb process, no zombie.
    listed = [line.split(maxsplit=1) for line in after.stdout.text.splitlines()]
    assert [command for _state, command in listed] == [
        "python3 -I -S /sandbox/agent/agent.py", "python3 /sandbox/agent/zygote.py",
        "python3 /sandbox/agent/zygote.py"]
    assert "Z" not in [state for state, _command in listed]


async def test_orphans_in_a_session_are_reaped_not_left_as_zombies(session: Session) -> None:
    # Each subshell exits at once; its sleep is reparented to the session's init.
    source = "for i in 1 2 3 4 5; do (sleep 0.1 &); done\n"

    await session.exec(Language.BASH, source)
    listed = await session.exec(Language.PYTHON, LIST_PROCESSES)

    # The agent, the zygote and the listing; no zombie.
    states = [line.split()[0] for line in listed.stdout.text.splitlines()]
    assert len(states) == 3
    assert "Z" not in states


async def test_a_timed_out_exec_takes_its_group_but_not_a_daemon_in_a_session_of_its_own(
    session: Session,
) -> None:
    source = "nohup sleep 601 >/dev/null 2>&1 &\nsetsid sleep 602 >/dev/null 2>&1 &\nsleep 60\n"

    timed_out = await session.exec(Language.BASH, source, timeout_s=3)
    listed = await session.exec(Language.PYTHON, LIST_PROCESSES)

    assert timed_out.outcome.timed_out is True
    commands = [line.split(maxsplit=1)[1] for line in listed.stdout.text.splitlines()]
    assert commands[:3] == ["python3 -I -S /sandbox/agent/agent.py",
                            "python3 /sandbox/agent/zygote.py", "sleep 602"]
    assert "sleep 601" not in commands


REACH_THE_AGENT = """
import os, signal
for name, attempt in [
    ("kill", lambda: os.kill(1, signal.SIGKILL)),
    ("stop", lambda: os.kill(1, signal.SIGSTOP)),
    ("its stdout", lambda: open("/proc/1/fd/1", "wb")),
    ("its stdin", lambda: open("/proc/1/fd/0", "rb")),
    ("its memory", lambda: open("/proc/1/mem", "rb")),
    ("its folder", lambda: open("/sandbox/agent/agent.py", "a")),
]:
    try:
        attempt()
        print(name, "reached")
    except OSError as error:
        print(name, type(error).__name__)
"""


async def test_the_sandbox_user_can_neither_signal_nor_speak_for_the_agent(
    session: Session,
) -> None:
    """The agent is the sandbox's init and speaks for it on its stdout: the code it runs (the
    sandbox user) cannot kill or stop it, write frames on its pipe, read its memory or change
    its program."""
    tried = await session.exec(Language.PYTHON, REACH_THE_AGENT)
    after = await session.exec(Language.BASH, "echo still here\n")

    assert tried.outcome.exit_code == 0, tried.stderr.text
    verdicts = dict(line.rsplit(" ", 1) for line in tried.stdout.text.splitlines())
    assert verdicts == {"kill": "PermissionError", "stop": "PermissionError",
                        "its stdout": "PermissionError", "its stdin": "PermissionError",
                        "its memory": "PermissionError", "its folder": "PermissionError"}
    assert after.stdout.text == "still here\n"


def _unmatched_by_itself(marker: str) -> str:
    """A grep pattern for marker that grep's own command line does not match."""
    return f"[{marker[0]}]{marker[1:]}"


DAEMON = """
import os, signal, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for name in ("SIGTERM", "SIGHUP", "SIGINT"):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        os.execvp("sleep", ["sleep", "{marker}"])
    os._exit(0)
os.wait()
for _ in range(100):  # a bound against a slow host, not a timing claim
    running = [pid for pid in os.listdir("/proc") if pid.isdigit()
               and b"{marker}" in open(f"/proc/{{pid}}/cmdline", "rb").read()]
    if running:
        break
    time.sleep(0.1)
print("daemon running:", len(running))
"""


async def test_a_double_forked_setsid_daemon_ignoring_signals_ends_with_its_sandbox(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    marker = f"{secrets.randbelow(10**6) + 10**6}.5"

    result = await run(runtime, Language.PYTHON, DAEMON.format(marker=marker), limits)
    seen_later = await run(runtime, Language.BASH, f"grep -l {_unmatched_by_itself(marker)}"
                           " /proc/[0-9]*/cmdline", limits)

    assert result.outcome.exit_code == 0
    assert result.stdout.text == "daemon running: 1\n"
    assert result.outcome.duration_ms < HANG_MS
    assert processes_mentioning(marker) == []
    assert (seen_later.outcome.exit_code, seen_later.stdout.text) == (1, "")


# Memory, disk and files -------------------------------------------------------------------


async def test_filling_tmp_and_dev_shm_stops_at_their_size_with_no_space_left(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = (
        "head -c 64M /dev/zero > /tmp/fill\ntmp=$?\n"
        "head -c 64M /dev/zero > /dev/shm/fill\nshm=$?\n"
        "stat -c %s /tmp/fill /dev/shm/fill\nexit $((tmp + shm))\n"
    )

    result = await run(runtime, Language.BASH, source, limits, tmp_mb=16)

    assert result.outcome.exit_code == 2
    assert result.stdout.text == f"{16 * MIB}\n{16 * MIB}\n"
    no_space = "head: error writing 'standard output': No space left on device\n"
    assert result.stderr.text == no_space * 2


FILL_ROOT_OVERLAY = """
chunk = b"x" * {mib}
for n in range({files}):
    folder = "/workspace" if n % 2 == 0 else "/var/tmp"
    with open(f"{{folder}}/fill-{{n}}", "wb") as out:
        for _ in range(64):
            out.write(chunk)
    print(n, flush=True)
print("wrote", {files} * 64, "MiB")
"""


async def test_filling_the_root_overlay_ends_out_of_memory_and_leaves_the_host_disk_alone(
    runtime: RunscSandboxRuntime, limits: Limits, settings: Settings
) -> None:
    # /workspace and /var/tmp are the root overlay's writable folders (/ itself is root's).
    source = FILL_ROOT_OVERLAY.format(mib=MIB, files=32)
    free_before = shutil.disk_usage(settings.state_dir).free

    result = await run(runtime, Language.PYTHON, source, limits, memory_mb=256)

    assert result.outcome.oom_killed is True
    assert result.outcome.exit_code not in (None, 0)
    assert "wrote" not in result.stdout.text
    assert free_before - shutil.disk_usage(settings.state_dir).free < 128 * MIB


def _folder_bytes(folder: Path) -> int:
    return sum(path.lstat().st_size for path in folder.rglob("*"))


async def test_files_in_the_root_overlay_are_held_in_memory_not_on_the_host_disk(
    session: Session, settings: Settings
) -> None:
    source = FILL_ROOT_OVERLAY.format(mib=MIB, files=8)
    free_before = shutil.disk_usage(settings.state_dir).free
    rootfs_before = _folder_bytes(settings.rootfs_dir / "workspace")

    written = await session.exec(Language.PYTHON, source)
    held = await session.exec(Language.BASH, "du -cm /workspace /var/tmp | tail -1")

    assert written.stdout.text.endswith("wrote 512 MiB\n")
    assert held.stdout.text == "512\ttotal\n"
    # 512 MiB sit in the sandbox while neither the disk nor the state folder grew by them.
    assert free_before - shutil.disk_usage(settings.state_dir).free < 128 * MIB
    assert _folder_bytes(settings.state_dir) < 16 * MIB
    assert _folder_bytes(settings.rootfs_dir / "workspace") == rootfs_before


EMPTY_FILES = """
count = 0
while count < 200_000:
    open(f"/tmp/empty-{count}", "w").close()
    count += 1
    if count % 10_000 == 0:
        print(count, flush=True)
print("created", count)
"""


async def test_creating_empty_files_until_failure_ends_out_of_memory(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    """gVisor's tmpfs has no inode limit (it ignores nr_inodes): each file costs the sandbox
    memory instead, so the memory limit is what stops the flood."""
    result = await run(runtime, Language.PYTHON, EMPTY_FILES, limits, memory_mb=64, tmp_mb=16)

    assert result.outcome.oom_killed is True
    assert result.outcome.exit_code not in (None, 0)
    assert "created" not in result.stdout.text


WRITE_PAST_FILE_SIZE = """
import errno
with open("/workspace/big", "wb") as out:
    try:
        for _ in range(64):
            out.write(b"x" * 1024 * 1024)
            out.flush()
    except OSError as error:
        print(errno.errorcode[error.errno], out.tell())
"""


async def test_writing_past_the_file_size_limit_fails_with_efbig_in_python(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    # Python ignores SIGXFSZ, so the write itself fails.
    result = await run(runtime, Language.PYTHON, WRITE_PAST_FILE_SIZE, limits, file_size_mb=8)

    assert result.outcome.exit_code == 0
    assert result.stdout.text == f"EFBIG {8 * MIB}\n"


async def test_writing_past_the_file_size_limit_kills_a_bash_command_with_sigxfsz(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = "head -c 64M /dev/zero > /workspace/big\necho $?\nstat -c %s /workspace/big\n"

    result = await run(runtime, Language.BASH, source, limits, file_size_mb=8)

    assert result.stdout.text == f"{128 + 25}\n{8 * MIB}\n"  # 25 is SIGXFSZ
    assert "File size limit exceeded" in result.stderr.text


# Output --------------------------------------------------------------------------------


async def test_text_and_binary_floods_on_both_streams_at_once_are_both_capped(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = (
        "head -c 16M /dev/zero | tr '\\0' o &\n"
        "head -c 16M /dev/urandom >&2 &\n"
        "wait\necho done\n"
    )
    cap = 64 * 1024

    result = await run(runtime, Language.BASH, source, limits, output_bytes=cap)

    assert result.outcome.exit_code == 0
    assert (result.stdout.truncated, result.stderr.truncated) == (True, True)
    assert result.stdout.text == "o" * cap
    # Random bytes decode to text with replacement characters, never more than the cap.
    assert "\ufffd" in result.stderr.text
    assert len(result.stderr.text) <= cap


# The host out of sight --------------------------------------------------------------------


async def test_no_process_environment_inside_holds_the_servers_variables(
    runtime: RunscSandboxRuntime, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, value = f"SANDBOX_TEST_CANARY_{secrets.token_hex(4)}", secrets.token_hex(16)
    monkeypatch.setenv(name, value)
    source = (
        "import glob, os\n"
        "environs = [open(path, 'rb').read() for path in glob.glob('/proc/[0-9]*/environ')]\n"
        "print(len(environs) >= 1)\n"
        f"print(any({value.encode()!r} in environ or {name.encode()!r} in environ\n"
        "          for environ in environs))\n"
        f"print({name!r} in os.popen('env').read())\n"
    )

    result = await run(runtime, Language.PYTHON, source, limits)

    assert result.stdout.text == "True\nFalse\nFalse\n"


async def test_etc_passwd_and_shadow_inside_are_the_rootfs_own_not_the_hosts(
    runtime: RunscSandboxRuntime, limits: Limits, settings: Settings
) -> None:
    rootfs_passwd = (settings.rootfs_dir / "etc/passwd").read_text()
    rootfs_shadow_size = (settings.rootfs_dir / "etc/shadow").stat().st_size
    source = (
        "import os, sys\n"
        "sys.stdout.write(open('/etc/passwd').read())\n"
        "try:\n"
        "    open('/etc/shadow').read()\n"
        "    print('shadow readable')\n"
        "except PermissionError:\n"
        "    print('shadow unreadable')\n"
        "print(os.stat('/etc/shadow').st_size)\n"
    )

    result = await run(runtime, Language.PYTHON, source, limits)

    assert rootfs_passwd != Path("/etc/passwd").read_text()
    assert rootfs_shadow_size != Path("/etc/shadow").stat().st_size
    assert result.stdout.text == f"{rootfs_passwd}shadow unreadable\n{rootfs_shadow_size}\n"


def _tree(folder: Path) -> dict[str, int]:
    return {str(path): path.lstat().st_mtime_ns for path in [folder, *folder.rglob("*")]}


async def test_no_mount_point_is_made_in_the_rootfs_folder_even_for_a_package_layer(
    runtime: RunscSandboxRuntime, limits: Limits, settings: Settings, tmp_path: Path
) -> None:
    """runsc makes a missing mount point in the root it is given: the rootfs recipe makes
    them all beforehand, so a read-only rootfs works and the folder stays as built."""
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "marker_module.py").write_text("VALUE = 42\n")
    before = _tree(settings.rootfs_dir / "sandbox"), _tree(settings.rootfs_dir / "workspace")

    result = await run_script(
        runtime, Language.PYTHON, b"import marker_module\nprint(marker_module.VALUE)\n",
        limits, package_dirs=(str(layer),),
    )

    assert result.stdout.text == "42\n"
    assert (_tree(settings.rootfs_dir / "sandbox"), _tree(settings.rootfs_dir / "workspace")) \
        == before


LOOK_AT_PROC = """
import os, socket
pids = [name for name in os.listdir("/proc") if name.isdigit()]
commands = [open(f"/proc/{{pid}}/cmdline", "rb").read() for pid in pids]
print("host pid visible:", os.path.exists("/proc/{host_pid}"))
print("host process seen:", any(b"{marker}" in command for command in commands))
print("pid 1:", commands[pids.index("1")].replace(b"\\0", b" ").decode().strip())
print("hostname:", socket.gethostname())
print("mount points:", [line.split()[4] for line in open("/proc/self/mountinfo")])
mountinfo = open("/proc/self/mountinfo").read()
print("host paths:", [path for path in {host_paths!r} if path in mountinfo])
"""


async def test_proc_shows_the_sandbox_alone_not_the_hosts_processes_name_or_mounts(
    runtime: RunscSandboxRuntime,
    limits: Limits,
    settings: Settings,
    host_sleeper: tuple[int, str],
) -> None:
    host_pid, marker = host_sleeper
    host_paths = ["/work", "/var/lib", str(REPOSITORY), str(settings.state_dir),
                  str(settings.rootfs_dir), str(settings.state_dir / "bundles")]
    source = LOOK_AT_PROC.format(host_pid=host_pid, marker=marker, host_paths=host_paths)

    result = await run(runtime, Language.PYTHON, source, limits)

    assert Path(f"/proc/{host_pid}").exists()
    assert socket.gethostname() != "sandbox"
    assert result.stdout.text == (
        "host pid visible: False\n"
        "host process seen: False\n"
        "pid 1: python3 /sandbox/input/main.py\n"
        "hostname: sandbox\n"
        "mount points: ['/', '/sys', '/dev', '/tmp', '/proc', '/dev/pts', '/dev/shm',"
        " '/sandbox/input']\n"
        "host paths: []\n"
    )


# The network ------------------------------------------------------------------------------

ATTEMPT = """
import errno, socket
def attempt(label, action):
    try:
        action()
        print(label, "ok")
    except socket.timeout:
        print(label, "timeout")
    except OSError as error:
        print(label, errno.errorcode[error.errno], error.strerror)
def connect(family, address):
    def go():
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(2)
        sock.connect(address)
    return go
"""


async def test_udp_to_the_host_loopback_never_arrives(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    source = ATTEMPT + (
        "sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for _ in range(20):\n    sock.sendto(b'from the sandbox', ('127.0.0.1', {port}))\n"
        "print('sent')\n"
    )
    with listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host_sender:
        # The listener works: the host's own datagram arrives.
        host_sender.sendto(b"host", ("127.0.0.1", port))
        assert listener.recv(64) == b"host"

        result = await run(runtime, Language.PYTHON, source, limits)

        with pytest.raises(BlockingIOError):
            listener.recv(64)
    assert result.stdout.text == "sent\n"


async def test_the_host_ipv6_loopback_is_unreachable(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    connections = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(accept, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        source = ATTEMPT + f"attempt('::1', connect(socket.AF_INET6, ('::1', {port})))\n"

        result = await run(runtime, Language.PYTHON, source, limits)

    assert result.stdout.text == "::1 ECONNREFUSED Connection refused\n"
    assert connections == []


async def test_raw_and_packet_sockets_are_refused(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    source = ATTEMPT + (
        "attempt('icmp', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, "
        "socket.IPPROTO_ICMP))\n"
        "attempt('tcp', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, "
        "socket.IPPROTO_TCP))\n"
        "attempt('packet', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0x0300))\n"
    )

    result = await run(runtime, Language.PYTHON, source, limits)

    assert result.stdout.text == "".join(
        f"{label} EPERM Operation not permitted\n" for label in ("icmp", "tcp", "packet")
    )


async def test_addresses_beyond_loopback_fail_at_once_with_no_route(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    """With --network=none the sandbox has no route: nothing leaves, and the error comes at
    once (a packet sent out would instead end in the 2 s socket timeout)."""
    targets = [("private", "AF_INET", "10.0.0.1"), ("metadata", "AF_INET", "169.254.169.254"),
               ("ipv6", "AF_INET6", "2001:db8::1")]
    source = ATTEMPT + "".join(
        f"attempt({label!r}, connect(socket.{family}, ({address!r}, 80)))\n"
        for label, family, address in targets
    ) + "sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n" \
        "attempt('udp', lambda: sock.sendto(b'x', ('10.0.0.1', 53)))\n"

    result = await run(runtime, Language.PYTHON, source, limits)

    assert result.stdout.text == "".join(
        f"{label} EHOSTUNREACH No route to host\n"
        for label in ("private", "metadata", "ipv6", "udp")
    )


# One sandbox after another ----------------------------------------------------------------


async def test_a_second_sandbox_finds_no_file_variable_or_process_of_the_first(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    token = secrets.token_hex(6)
    seconds = f"{secrets.randbelow(10**6) + 10**6}.25"
    paths = [f"{folder}/trace-{token}" for folder in ("/tmp", "/workspace", "/var/tmp",
                                                       "/dev/shm", "/run/lock")]
    first = "".join(f"echo trace > {path}\n" for path in paths) + (
        f"echo 'export TRACE_{token}=1' >> ~/.bashrc\n"
        f"echo 'export TRACE_{token}=1' >> ~/.profile\n"
        f"export TRACE_{token}=1\n"
        f"setsid nohup sleep {seconds} >/dev/null 2>&1 &\n"
        f"ls {' '.join(paths)} | wc -l\n"
    )
    second = "".join(f"[ -e {path} ] && echo found {path}\n" for path in paths) + (
        f"env | grep TRACE_{token}\n"
        f"bash -lc env | grep TRACE_{token}\n"
        f"bash -ic env 2>/dev/null | grep TRACE_{token}\n"
        f"grep -l {_unmatched_by_itself(seconds)} /proc/[0-9]*/cmdline\n"
        "echo looked\n"
    )

    wrote = await run(runtime, Language.BASH, first, limits)
    looked = await run(runtime, Language.BASH, second, limits)

    assert wrote.stdout.text == f"{len(paths)}\n"
    assert looked.stdout.text == "looked\n"


# Without cgroups --------------------------------------------------------------------------

MEMORY_BOMB = """
blocks = []
for step in range(32):
    blocks.append(bytearray(64 * 1024 * 1024))
    print(step + 1, flush=True)
print("allocated 2 GiB")
"""


@pytest.fixture
def without_cgroups(runtime: RunscSandboxRuntime) -> RunscSandboxRuntime:
    """The runtime as on a host without a writable cgroup tree: runsc runs with
    --ignore-cgroups and no kernel limit holds the sandbox's memory."""
    runtime._cgroups = cgroups.NoCgroups()
    return runtime


async def test_without_cgroups_the_runtime_says_cpu_is_not_held_and_memory_only_watched(
    without_cgroups: RunscSandboxRuntime,
) -> None:
    layers = without_cgroups.limit_layers()

    assert (layers["cpu"], layers["memory"], layers["pids"]) == ([], ["memory_watch"], ["rlimit"])


async def test_without_cgroups_a_memory_bomb_is_ended_by_the_memory_watch(
    without_cgroups: RunscSandboxRuntime, limits: Limits
) -> None:
    result = await run(without_cgroups, Language.PYTHON, MEMORY_BOMB, limits, memory_mb=256)

    assert result.outcome.oom_killed is True
    assert result.outcome.exit_code == 137
    assert "allocated" not in result.stdout.text


async def test_without_cgroups_a_script_within_its_memory_is_left_alone(
    without_cgroups: RunscSandboxRuntime, limits: Limits
) -> None:
    source = "import time\nblock = bytearray(128 * 1024 * 1024)\ntime.sleep(1)\nprint('fine')\n"

    result = await run(without_cgroups, Language.PYTHON, source, limits, memory_mb=256)

    assert (result.outcome.exit_code, result.outcome.oom_killed) == (0, False)
    assert result.stdout.text == "fine\n"
