"""`make cluster`: the service on several instances, locally, as on Cloud Run: a throwaway
PostgreSQL, one shared checkpoint folder, and instances on 127.0.0.1:8081, :8082... (each with
a state folder of its own). Prints their URLs, and stops everything on Ctrl-C or SIGTERM:
the instances first (they checkpoint what runs), then PostgreSQL; the folders go with them.

    python scripts/cluster.py [--instances 2] [--port 8081]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pg_cluster import Cluster, throwaway_cluster

from sandbox.adapters.runsc import cgroups

ROOT = Path(__file__).resolve().parents[1]
START_BOUND_S = 120.0
STOP_BOUND_S = 60.0
DATABASE = "sandbox"


@dataclass
class Instance:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def environment(name: str, port: int, state: Path, checkpoints: Path, url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "SANDBOX_HOST": "127.0.0.1",
        "SANDBOX_PORT": str(port),
        "SANDBOX_INSTANCE_ID": name,
        "SANDBOX_STATE_DIR": str(state),
        "SANDBOX_CHECKPOINT_DIR": str(checkpoints),
        "SANDBOX_DATABASE_URL": url,
        "SANDBOX_LOG_FORMAT": env.get("SANDBOX_LOG_FORMAT", "json"),
        # Warm pools on every instance would hold much of a laptop's memory; ask for them
        # with SANDBOX_POOL.
        "SANDBOX_POOL": env.get("SANDBOX_POOL", ""),
    })
    return env


@contextlib.contextmanager
def database(cluster: Cluster) -> Iterator[str]:
    with psycopg.connect(cluster.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {DATABASE} TEMPLATE template0")
    yield cluster.url(DATABASE)


def start(name: str, port: int, folder: Path, checkpoints: Path, url: str) -> Instance:
    state = folder / name
    state.mkdir(mode=0o700)
    log = folder / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sandbox"], cwd=ROOT,
            env=environment(name, port, state, checkpoints, url),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )
    return Instance(name, f"http://127.0.0.1:{port}", process, log)


def wait_ready(instance: Instance) -> None:
    deadline = time.monotonic() + START_BOUND_S
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline:
            if instance.process.poll() is not None:
                raise SystemExit(f"instance {instance.name} exited:\n{tail(instance.log)}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{instance.url}/readyz").status_code == 200:
                    return
            time.sleep(0.2)
    raise SystemExit(f"instance {instance.name} was not ready in {START_BOUND_S:g} s:\n"
                     f"{tail(instance.log)}")


def stop(instances: list[Instance]) -> None:
    """SIGTERM to every instance at once (each checkpoints what it runs), then wait."""
    for instance in instances:
        if instance.process.poll() is None:
            instance.process.send_signal(signal.SIGTERM)
    for instance in instances:
        try:
            code = instance.process.wait(timeout=STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            instance.process.kill()
            code = instance.process.wait()
        print(f"instance {instance.name} stopped (exit status {code})", flush=True)


def remove_cgroup_parents(folder: Path, instances: list[Instance]) -> None:
    """Each instance's cgroup parent (named in its state folder), empty once it stopped."""
    for instance in instances:
        kept = folder / instance.name / cgroups.PARENT_FILE
        with contextlib.suppress(OSError, ValueError):
            cgroups.remove_parent(kept.read_text().strip())


def tail(log: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


def serve(count: int, first_port: int) -> None:
    stopping = False

    def asked_to_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, asked_to_stop)
    signal.signal(signal.SIGINT, asked_to_stop)
    folder = Path(tempfile.mkdtemp(prefix="sandbox-cluster-"))
    instances: list[Instance] = []
    try:
        with throwaway_cluster() as cluster, database(cluster) as url:
            checkpoints = folder / "checkpoints"
            checkpoints.mkdir(mode=0o700)
            try:
                for index in range(count):
                    instances.append(start(chr(ord("a") + index), first_port + index, folder,
                                           checkpoints, url))
                for instance in instances:
                    wait_ready(instance)
                report(instances, folder, cluster)
                while not stopping:
                    time.sleep(0.2)
                    for instance in instances:
                        if instance.process.poll() is not None:
                            print(f"instance {instance.name} exited:\n{tail(instance.log)}")
                            stopping = True
            finally:
                print("stopping the instances, then PostgreSQL", flush=True)
                stop(instances)
                remove_cgroup_parents(folder, instances)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def report(instances: list[Instance], folder: Path, cluster: Cluster) -> None:
    print(f"PostgreSQL: {cluster.url(DATABASE)}")
    print(f"shared checkpoint folder: {folder / 'checkpoints'}")
    for instance in instances:
        print(f"instance {instance.name}: {instance.url}  (log: {instance.log})")
    print("ready; Ctrl-C (or SIGTERM) stops everything", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--port", type=int, default=8081, help="the first instance's port")
    args = parser.parse_args()
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    serve(args.instances, args.port)


if __name__ == "__main__":
    main()
