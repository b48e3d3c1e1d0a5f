"""The OCI runtime spec of one sandbox.

The rootfs is shared by every sandbox and never written: runsc is started with
`--overlay2=root:memory`, so writes to `/` land in the sandbox's own memory (they count
against its memory limit and vanish with it). `root.readonly` stays false because a read-only
root stays read-only even under the overlay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox.domain.model import Language, Limits, Program, SandboxSpec

SANDBOX_UID = 1000
INPUT_DIR = "/sandbox/input"
PACKAGES_DIR = "/sandbox/packages"
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


def init_argv(program: Program) -> list[str]:
    """The sandbox's first process. Orphans are reparented to it; a script's shell reaps
    them, but a session's idle `sleep` never would, and every zombie counts against
    RLIMIT_NPROC until the session cannot start a process. With SIGCHLD ignored (inherited
    across exec) the kernel reaps them instead."""
    if program.language is None:
        return ["env", "--ignore-signal=CHLD", *program.argv]
    return program_argv(program)


def group_kill_process(pgid: int) -> dict[str, Any]:
    """A process that SIGKILLs one process group from inside the sandbox: `runsc kill` only
    signals single processes, and a fork bomb's children share its group. gVisor signals a
    group one member at a time, so children forked meanwhile survive a single kill: repeat
    until the group is gone (bounded). It runs as root with CAP_KILL alone, since the
    sandbox user may have no process left to start, and with a bare environment, so that
    nothing the sandbox wrote (BASH_ENV, rc files) is read. Only bash builtins: no forks."""
    only_kill = ["CAP_KILL"]
    repeat = (f"n=0; while kill -KILL -- -{int(pgid)} 2>/dev/null && [ $n -lt 1000 ]; "
              "do n=$((n+1)); done")
    return {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["bash", "--norc", "--noprofile", "-c", repeat],
        "env": ["PATH=/usr/bin:/bin"],
        "cwd": "/",
        "capabilities": {"bounding": only_kill, "effective": only_kill,
                         "permitted": only_kill, "inheritable": [], "ambient": []},
        "noNewPrivileges": True,
    }


def environment(spec: SandboxSpec, program: Program) -> list[str]:
    env = dict(_BASE_ENV)
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


def _mounts(spec: SandboxSpec, input_dir: Path) -> list[dict[str, Any]]:
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
    for index, layer in enumerate(spec.package_dirs):
        mounts.append({"destination": f"{PACKAGES_DIR}/{index}", "type": "bind",
                       "source": layer, "options": ["rbind", "ro", "nosuid", "nodev"]})
    return mounts


def build_config(
    spec: SandboxSpec, program: Program, rootfs: Path, input_dir: Path, cgroups_path: str
) -> dict[str, Any]:
    limits = spec.limits
    period = 100_000
    no_capabilities: dict[str, list[str]] = {
        "bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": [],
    }
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": SANDBOX_UID, "gid": SANDBOX_UID},
            "args": init_argv(program),
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
        "mounts": _mounts(spec, input_dir),
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
