"""A throwaway PostgreSQL cluster for tests and benchmarks: Debian's server binaries, a
temporary folder, a Unix socket in it and no TCP port; stopped and removed on exit.

PostgreSQL refuses to run as root, so under root the cluster belongs to the `postgres`
system user (made by Debian's package), or `nobody` where that user is missing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER_BINARIES = Path("/usr/lib/postgresql")
START_TIMEOUT_S = 60


class ClusterUnavailable(RuntimeError):
    """PostgreSQL's binaries are missing or the cluster did not start."""


@dataclass(frozen=True)
class Cluster:
    folder: Path
    socket_dir: Path
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql:///{database}?host={self.socket_dir}&user={self.user}"


def server_bin() -> Path:
    """The newest PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        (path.parent for path in SERVER_BINARIES.glob("*/bin/initdb")),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
    )
    if not found:
        raise ClusterUnavailable(
            f"no initdb under {SERVER_BINARIES}/*/bin: install Debian's `postgresql` package"
        )
    return found[-1]


def _run_as() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ClusterUnavailable("running as root and neither `postgres` nor `nobody` exists")


def _as_user(owner: pwd.struct_passwd, argv: list[str], timeout: float) -> None:
    switch = os.geteuid() == 0
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd="/",
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": "/"},
        user=owner.pw_uid if switch else None, group=owner.pw_gid if switch else None,
        extra_groups=[] if switch else None,
    )
    if result.returncode != 0:
        raise ClusterUnavailable(f"{Path(argv[0]).name} failed: {result.stderr.strip()}")


@contextlib.contextmanager
def throwaway_cluster(durable: bool = False) -> Iterator[Cluster]:
    """Starts a cluster (initdb, trust authentication) and stops and removes it afterwards,
    whatever happened. Its data is thrown away, so fsync is off unless `durable` (for
    measurements that compare with a store that syncs)."""
    bin_dir = server_bin()
    owner = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="sandbox-pg-"))
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    data = folder / "data"
    try:
        _as_user(owner, [str(bin_dir / "initdb"), "-D", str(data), "-U", owner.pw_name,
                         "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"], 120)
        options = f"-k {folder} -c listen_addresses= -c max_connections=200"
        if not durable:
            options += " -c fsync=off"
        _as_user(owner, [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
                         "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start"],
                 START_TIMEOUT_S + 10)
        try:
            yield Cluster(folder=folder, socket_dir=folder, user=owner.pw_name)
        finally:
            _as_user(owner, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                             "-w", "stop"], 60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def log_tail(cluster: Cluster, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join((cluster.folder / "log").read_text().splitlines()[-lines:])
    return ""
