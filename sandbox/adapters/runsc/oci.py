"""The OCI runtime spec of one sandbox.

The rootfs is shared by every sandbox and never written: runsc is started with
`--overlay2=root:memory`, so writes to `/` land in the sandbox's own memory (they count
against its memory limit and vanish with it). `root.readonly` stays false because a read-only
root stays read-only even under the overlay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox.adapters.runsc.inside.agent import RELAY_UID as RELAY_UID
from sandbox.domain.model import Language, Limits, Program, SandboxSpec

SANDBOX_UID = 1000
INPUT_DIR = "/sandbox/input"
PACKAGES_DIR = "/sandbox/packages"
AGENT_DIR = "/sandbox/agent"
# Sandboxes with an allow-list: the proxy's socket is mounted here (readable by the relay's
# user alone), and the relay listens on this port of the sandbox's own loopback.
EGRESS_DIR = "/sandbox/egress"
EGRESS_SOCKET = f"{EGRESS_DIR}/proxy.sock"
RELAY_PORT = 3128
PROXY_URL = f"http://127.0.0.1:{RELAY_PORT}"
AGENT_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL")
WORKDIR = "/workspace"
OOM_SCORE_ADJ = 1000

_SCRIPT_NAMES = {Language.PYTHON: "main.py", Language.BASH: "main.sh"}
_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": WORKDIR,
    "USER": "sandbox",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "MPLBACKEND": "Agg",
    "MPLCONFIGDIR": "/usr/local/share/matplotlib",
}


def script_name(language: Language) -> str:
    return _SCRIPT_NAMES[language]


def program_argv(program: Program) -> list[str]:
    if program.language is Language.PYTHON:
        return ["python3", f"{INPUT_DIR}/{script_name(Language.PYTHON)}"]
    if program.language is Language.BASH:
        return ["bash", f"{INPUT_DIR}/{script_name(Language.BASH)}"]
    return list(program.argv)


def agent_process(limits: Limits) -> dict[str, Any]:
    """The init of a managed sandbox: the agent, as root inside the sandbox with the three
    capabilities it needs to start processes as the sandbox user, read and write files with
    that user's rights, and kill process groups. Its own environment is bare: it gives every
    process it starts the sandbox's environment itself."""
    capabilities = list(AGENT_CAPABILITIES)
    return {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["python3", "-I", "-S", f"{AGENT_DIR}/agent.py"],
        "env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
        "cwd": "/",
        "capabilities": {"bounding": capabilities, "effective": capabilities,
                         "permitted": capabilities, "inheritable": [], "ambient": []},
        "rlimits": _rlimits(limits),
        "noNewPrivileges": True,
        "oomScoreAdj": OOM_SCORE_ADJ,  # see build_config
    }


def relay_argv() -> list[str]:
    return ["python3", "-I", "-S", f"{AGENT_DIR}/relay.py", str(RELAY_PORT), EGRESS_SOCKET]


def proxy_environment() -> dict[str, str]:
    """What points HTTP clients (pip, requests, urllib, curl) at the relay. The sandbox's own
    loopback stays direct: it leads nowhere but the sandbox itself."""
    loopback = "localhost,127.0.0.1,::1"
    return {"HTTP_PROXY": PROXY_URL, "HTTPS_PROXY": PROXY_URL, "http_proxy": PROXY_URL,
            "https_proxy": PROXY_URL, "NO_PROXY": loopback, "no_proxy": loopback}


def environment(spec: SandboxSpec, program: Program) -> list[str]:
    env = dict(_BASE_ENV)
    if spec.network_allow:
        env.update(proxy_environment())
    if spec.package_dirs:
        env["PYTHONPATH"] = ":".join(
            f"{PACKAGES_DIR}/{index}" for index in range(len(spec.package_dirs))
        )
    env.update(spec.env)
    env.update(program.env)
    return [f"{key}={value}" for key, value in env.items()]


def _rlimits(limits: Limits) -> list[dict[str, Any]]:
    def rlimit(kind: str, value: int) -> dict[str, Any]:
        return {"type": kind, "hard": value, "soft": value}

    return [
        rlimit("RLIMIT_NOFILE", limits.open_files),
        rlimit("RLIMIT_NPROC", limits.pids),
        rlimit("RLIMIT_FSIZE", limits.file_size_mb * 1024 * 1024),
        rlimit("RLIMIT_CORE", 0),
    ]


def _mounts(
    spec: SandboxSpec, input_dir: Path, agent_dir: Path | None, egress_dir: Path | None
) -> list[dict[str, Any]]:
    tmp_size = f"size={spec.limits.tmp_mb}m"
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", tmp_size]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", tmp_size]},
        {"destination": INPUT_DIR, "type": "bind", "source": str(input_dir),
         "options": ["rbind", "ro", "nosuid", "nodev"]},
    ]
    if agent_dir is not None:
        mounts.append({"destination": AGENT_DIR, "type": "bind", "source": str(agent_dir),
                       "options": ["rbind", "ro", "nosuid", "nodev"]})
    if egress_dir is not None:
        # The host folder is 0700 and owned by the relay's user: nobody else inside gets in.
        mounts.append({"destination": EGRESS_DIR, "type": "bind", "source": str(egress_dir),
                       "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})
    for index, layer in enumerate(spec.package_dirs):
        mounts.append({"destination": f"{PACKAGES_DIR}/{index}", "type": "bind",
                       "source": layer, "options": ["rbind", "ro", "nosuid", "nodev"]})
    return mounts


def build_config(
    spec: SandboxSpec,
    program: Program,
    rootfs: Path,
    input_dir: Path,
    cgroups_path: str,
    agent_dir: Path | None = None,
    egress_dir: Path | None = None,
) -> dict[str, Any]:
    """With `agent_dir`, a managed sandbox whose init is the agent (mounted from there);
    without, a one-shot sandbox whose init is the program itself. With `egress_dir`, the
    folder of its egress proxy's socket."""
    limits = spec.limits
    period = 100_000
    no_capabilities: dict[str, list[str]] = {
        "bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": [],
    }
    return {
        "ociVersion": "1.0.2",
        "process": agent_process(limits) if agent_dir is not None else {
            "terminal": False,
            "user": {"uid": SANDBOX_UID, "gid": SANDBOX_UID},
            "args": program_argv(program),
            "env": environment(spec, program),
            "cwd": WORKDIR,
            "capabilities": no_capabilities,
            "rlimits": _rlimits(limits),
            "noNewPrivileges": True,
            # runsc gives this to the sandbox's host processes (its kernel, the sentry, and
            # its gofer), not to the address spaces it runs programs in. The kernel's OOM
            # killer then ends the sandbox as a whole, which runsc reports as a SIGKILL,
            # instead of one address space, which gVisor reports as the program's own exit
            # status 1, a normal-looking exit. Under host-wide memory pressure, sandboxes go
            # before the server.
            "oomScoreAdj": OOM_SCORE_ADJ,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": "sandbox",
        "mounts": _mounts(spec, input_dir, agent_dir, egress_dir),
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {
                # The memory limit is set on the parent cgroup the service owns, where the
                # out-of-memory verdict can still be read after runsc removed its own.
                "cpu": {"quota": int(limits.cpus * period), "period": period},
                # A backstop only: pids counts the sandbox's own host threads too, and a low
                # value crashes the sandbox. RLIMIT_NPROC is the real process limit.
                "pids": {"limit": 16384},
            },
            "namespaces": [
                {"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount")
            ],
        },
    }
