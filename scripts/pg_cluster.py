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
    bin_dir: Path
    owner: pwd.struct_passwd
    options: str

    @property
    def user(self) -> str:
        return self.owner.pw_name

    def url(self, database: str = "postgres") -> str:
        return f"postgresql:///{database}?host={self.folder}&user={self.user}"

    def start(self) -> None:
        _as_user(self.owner, [str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"),
                              "-l", str(self.folder / "log"), "-o", self.options, "-w",
                              "-t", str(START_TIMEOUT_S), "start"], START_TIMEOUT_S + 10)

    def stop(self) -> None:
        """Stops the server at once, as a crash would (tests of outages start it again)."""
        _as_user(self.owner, [str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"),
                              "-m", "immediate", "-w", "stop"], 60)


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
    options = f"-k {folder} -c listen_addresses= -c max_connections=200"
    cluster = Cluster(folder, bin_dir, owner,
                      options if durable else f"{options} -c fsync=off")
    try:
        _as_user(owner, [str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U",
                         owner.pw_name, "-A", "trust", "-E", "UTF8", "--locale=C",
                         "--no-sync"], 120)
        cluster.start()
        try:
            yield cluster
        finally:
            with contextlib.suppress(ClusterUnavailable):  # a test left it stopped
                cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def log_tail(cluster: Cluster, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join((cluster.folder / "log").read_text().splitlines()[-lines:])
    return ""
