"""Which layer holds each limit of a sandbox, on a host with or without usable cgroups.

Several layers hold a limit where one can fail; without cgroups some limits lose their only
strong layer (the CPU quota disappears, memory is only polled). Operators see this table in
`/readyz` and in the start-up log.
"""

from __future__ import annotations

CGROUP = "cgroup"  # the kernel, through the sandbox's cgroup
RLIMIT = "rlimit"  # gVisor's kernel, through the process's rlimits
MEMORY_WATCH = "memory_watch"  # the server polls gVisor's memory accounting, then kills
GVISOR_TMPFS = "gvisor_tmpfs"  # gVisor's size-capped tmpfs
SERVER_TIMER = "server_timer"  # the server's own timer, then SIGKILL of the sandbox
SERVER_CAP = "server_cap"  # the server stops keeping what is past the cap


def limit_layers(cgroups: bool) -> dict[str, list[str]]:
    """Each limit and the layers that hold it, strongest first; an empty list means the limit
    is not held on this host."""
    return {
        "memory": [CGROUP] if cgroups else [MEMORY_WATCH],
        "cpu": [CGROUP] if cgroups else [],
        # RLIMIT_NPROC is the real limit; the cgroup's pids.max is a high backstop.
        "pids": [RLIMIT, CGROUP] if cgroups else [RLIMIT],
        "open_files": [RLIMIT],
        "file_size": [RLIMIT],
        "tmp": [GVISOR_TMPFS],
        "wall_time": [SERVER_TIMER],
        "output": [SERVER_CAP],
    }


def weakened(layers: dict[str, list[str]]) -> dict[str, list[str]]:
    """The limits held by fewer layers than on a host with cgroups, with what is left."""
    full = limit_layers(cgroups=True)
    return {name: held for name, held in layers.items() if held != full.get(name, held)}
