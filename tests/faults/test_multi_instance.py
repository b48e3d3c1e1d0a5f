"""Two server instances on this host share one PostgreSQL and one checkpoint folder, as on
Cloud Run: both list the same sandboxes; a call that needs a sandbox's processes is served on
whichever instance it reaches (the owner checkpoints it, lets go of its lease, and the other
restores it); concurrent callers agree on one owner, and the host never runs two containers
for one sandbox id; an instance killed with SIGKILL leaves its running sandboxes recorded
`lost` and its checkpointed ones restorable elsewhere; one stopped with SIGTERM checkpoints
what it runs, and the other instance restores all of it.

Real gVisor, real PostgreSQL (a throwaway cluster), real server processes on loopback."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration.server import (
    ROOT,
    Server,
    destroy_leftovers,
    eventually,
    free_port,
    ok,
    records,
    serving,
)
from integration.support import runtime_settings
from pg_cluster import Cluster

from faults.support import bash
from sandbox.settings import Settings

pytestmark = pytest.mark.runsc

# Short leases, so that a killed instance's sandboxes are settled within seconds.
LEASE_TTL_S = 6
# The surviving instance records a dead one's sandboxes lost at its next reap round after the
# lease expired (every 5 s by default): a bound, not an expectation.
SETTLED_WITHIN_S = LEASE_TTL_S + 30
CALLS_AT_ONCE = 4
NOTE = "/workspace/note.txt"


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoints"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def instance_settings(tmp_path: Path) -> Iterator[dict[str, Settings]]:
    """Each instance's own state folder and cgroup parent; what they leave on the host is
    destroyed after the test (the test asserts on containers before that)."""
    made = {name: runtime_settings(tmp_path / name) for name in ("a", "b")}
    yield made
    for settings in made.values():
        destroy_leftovers(settings)


@contextlib.contextmanager
def instance(
    name: str, settings: Settings, database_url: str, checkpoints: Path, **overrides: str
) -> Iterator[Server]:
    variables = {"SANDBOX_DATABASE_URL": database_url,
                 "SANDBOX_CHECKPOINT_DIR": str(checkpoints),
                 "SANDBOX_INSTANCE_ID": name,
                 "SANDBOX_LEASE_TTL_S": str(LEASE_TTL_S),
                 "SANDBOX_HANDOFF_TIMEOUT_S": "60"}
    with serving(settings, settings.state_dir.parent / f"{name}.log",
                 **(variables | overrides)) as server:
        yield server


def containers_of(sandbox_id: str) -> set[str]:
    """The runsc roots (one per instance) under which a sandbox with this id runs on this
    host, found from the processes themselves: every container has one `runsc-sandbox`."""
    roots = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # it ended while we looked
        if argv[0] == "runsc-sandbox" and any(sandbox_id in word for word in argv):
            roots.update(word.removeprefix("--root=") for word in argv
                         if word.startswith("--root="))
    return roots


def root_of(settings: Settings) -> str:
    return str(settings.state_dir / "runsc")


@contextlib.contextmanager
def watching_containers(sandbox_id: str) -> Iterator[list[int]]:
    """While the block runs, count the host's containers of the sandbox every 20 ms; the
    list holds the most seen at once (as one number) when the block ends."""
    most = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            most[0] = max(most[0], len(containers_of(sandbox_id)))
            done.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield most
    finally:
        done.set()
        watcher.join(timeout=30)


def record(server: Server, sandbox_id: str) -> dict[str, Any]:
    return ok(server.client.get(f"/sandboxes/{sandbox_id}"))


def states(server: Server) -> dict[str, tuple[str, str | None]]:
    return {sandbox_id: (found["state"], found["reason_code"])
            for sandbox_id, found in records(server.client).items()}


def calls_at_once(servers: list[Server], sandbox_id: str) -> list[tuple[int, str]]:
    """CALLS_AT_ONCE execs of the sandbox, sent together, alternating between the instances;
    each appends its number to a file. (status, stdout) of each."""

    def call(number: int) -> tuple[int, str]:
        server = servers[number % len(servers)]
        with httpx.Client(base_url=str(server.client.base_url), timeout=120) as client:
            code = f"echo {number} >> /workspace/calls.txt; echo {number}"
            response = client.post(f"/sandboxes/{sandbox_id}/exec",
                                   json={"language": "bash", "code": code})
        body = response.json() if response.status_code == 200 else {}
        return response.status_code, str(body.get("stdout", response.text))

    with concurrent.futures.ThreadPoolExecutor(CALLS_AT_ONCE) as pool:
        return list(pool.map(call, range(CALLS_AT_ONCE)))


def test_a_call_on_either_instance_is_served_by_one_owner_at_a_time(
    instance_settings: dict[str, Settings], postgres_url: str, checkpoints: Path
) -> None:
    a_settings, b_settings = instance_settings["a"], instance_settings["b"]
    with instance("a", a_settings, postgres_url, checkpoints) as a, \
            instance("b", b_settings, postgres_url, checkpoints) as b:
        sandbox_id = ok(a.client.post("/sandboxes", json={}), 201)["sandbox_id"]
        bash(a.client, sandbox_id, f"echo written on a > {NOTE}")
        first_home = containers_of(sandbox_id)
        listed = (states(a), states(b))

        read_on_b = bash(b.client, sandbox_id, f"cat {NOTE}")  # a hands it over to b
        second_home = containers_of(sandbox_id)
        seen_on_a = record(a, sandbox_id)["state"]

        ok(b.client.post(f"/sandboxes/{sandbox_id}/suspend"))
        suspended_on_a = record(a, sandbox_id)["state"]
        ok(a.client.post(f"/sandboxes/{sandbox_id}/restore"))
        read_on_a = bash(a.client, sandbox_id, f"cat {NOTE}")

        with watching_containers(sandbox_id) as most:
            answers = calls_at_once([a, b], sandbox_id)
        appended = bash(b.client, sandbox_id, "sort -n /workspace/calls.txt")
        last_home = containers_of(sandbox_id)
        deleted = a.client.delete(f"/sandboxes/{sandbox_id}").status_code
        gone = (b.client.get(f"/sandboxes/{sandbox_id}").status_code,
                eventually(lambda: not containers_of(sandbox_id), what="the container's end"))
        logs = (a.log_tail(), b.log_tail())

    assert listed[0] == listed[1] == {sandbox_id: ("running", None)}
    assert first_home == {root_of(a_settings)}
    assert read_on_b == "written on a\n"
    assert second_home == {root_of(b_settings)}, logs
    assert seen_on_a == "running"  # on b now: a reads the shared record
    assert suspended_on_a == "suspended"
    assert read_on_a == "written on a\n"
    assert answers == [(200, f"{number}\n") for number in range(CALLS_AT_ONCE)], logs
    assert appended.split() == [str(number) for number in range(CALLS_AT_ONCE)]
    assert most[0] == 1, "two containers of one sandbox ran at once"
    assert len(last_home) == 1
    assert deleted == 200
    assert gone == (404, True)


def test_a_killed_instance_leaves_its_running_sandbox_lost_and_its_checkpoint_restorable(
    instance_settings: dict[str, Settings], postgres_url: str, checkpoints: Path
) -> None:
    a_settings, b_settings = instance_settings["a"], instance_settings["b"]
    with instance("b", b_settings, postgres_url, checkpoints) as b:
        with instance("a", a_settings, postgres_url, checkpoints) as a:
            running = ok(a.client.post("/sandboxes", json={}), 201)["sandbox_id"]
            saved = ok(a.client.post("/sandboxes", json={}), 201)["sandbox_id"]
            bash(a.client, saved, f"echo saved on a > {NOTE}")
            ok(a.client.post(f"/sandboxes/{saved}/suspend"))
            killed = a.kill()
        # Its server died, not the machine: the container runs on, ownerless.
        orphaned = containers_of(running)
        lost = eventually(lambda: record(b, running)["state"] != "running"
                          and record(b, running), within_s=SETTLED_WITHIN_S,
                          what="the dead instance's sandbox recorded lost")
        refused = b.client.post(f"/sandboxes/{running}/exec",
                                json={"language": "bash", "code": "true"}).status_code
        ok(b.client.post(f"/sandboxes/{saved}/restore"))
        kept = bash(b.client, saved, f"cat {NOTE}")
        # The killed instance comes back on its state folder: it ends the stale container
        # and leaves what b owns alone.
        with instance("a", a_settings, postgres_url, checkpoints) as again:
            after_restart = (containers_of(running), containers_of(saved))
            still_lost = record(again, running)["reason_code"]
            saved_state = record(again, saved)["state"]

    assert killed == -signal.SIGKILL
    assert orphaned == {root_of(a_settings)}
    assert (lost["state"], lost["reason_code"]) == ("exited", "lost"), lost
    assert "stopped" in lost["reason"]
    assert refused == 409
    assert kept == "saved on a\n"
    assert after_restart == (set(), {root_of(b_settings)})
    assert (still_lost, saved_state) == ("lost", "running")


def test_an_owner_paused_past_its_lease_ends_its_container_and_never_writes_again(
    instance_settings: dict[str, Settings], postgres_url: str, checkpoints: Path
) -> None:
    a_settings, b_settings = instance_settings["a"], instance_settings["b"]
    with instance("b", b_settings, postgres_url, checkpoints) as b, \
            instance("a", a_settings, postgres_url, checkpoints) as a:
        sandbox_id = ok(a.client.post("/sandboxes", json={}), 201)["sandbox_id"]
        a.process.send_signal(signal.SIGSTOP)  # a stalled VM, a long GC pause
        try:
            lost = eventually(lambda: record(b, sandbox_id)["state"] != "running"
                              and record(b, sandbox_id), within_s=SETTLED_WITHIN_S,
                              what="the paused owner's sandbox recorded lost")
        finally:
            a.process.send_signal(signal.SIGCONT)
        ended = eventually(lambda: not containers_of(sandbox_id), within_s=SETTLED_WITHIN_S,
                           what="the resumed owner ending its container")
        time.sleep(LEASE_TTL_S / 2)  # a heartbeat or two of the resumed owner
        after = (record(a, sandbox_id), record(b, sandbox_id))

    assert (lost["state"], lost["reason_code"]) == ("exited", "lost")
    assert ended
    assert after[0] == after[1] == lost  # the resumed owner wrote nothing


SESSIONS_AT_SIGTERM = 5
# Measured here: a session limited to 64 MiB is killed by its memory cgroup while `runsc
# restore` loads it on another instance (the sentry's own memory counts too); 128 MiB is not.
SESSION_MEMORY_MB = 128


def test_sigterm_checkpoints_every_running_session_and_another_instance_restores_them_all(
    instance_settings: dict[str, Settings], postgres_url: str, checkpoints: Path
) -> None:
    a_settings, b_settings = instance_settings["a"], instance_settings["b"]
    with instance("b", b_settings, postgres_url, checkpoints) as b:
        with instance("a", a_settings, postgres_url, checkpoints,
                      SANDBOX_SHUTDOWN_GRACE_S="60") as a:
            made = [ok(a.client.post("/sandboxes", json={"memory_mb": SESSION_MEMORY_MB}),
                       201)["sandbox_id"] for _ in range(SESSIONS_AT_SIGTERM)]
            for number, sandbox_id in enumerate(made):
                bash(a.client, sandbox_id, f"echo session {number} > {NOTE}")
            started = time.monotonic()
            stopped = a.stop()
            took_s = time.monotonic() - started
        after_stop = states(b)
        left_on_host = [containers_of(sandbox_id) for sandbox_id in made]
        kept = [bash(b.client, sandbox_id, f"cat {NOTE}") for sandbox_id in made]
        homes = [containers_of(sandbox_id) for sandbox_id in made]

    assert stopped == 0
    assert after_stop == {sandbox_id: ("suspended", "server_stopped") for sandbox_id in made}, \
        f"after {took_s:.1f} s"
    assert left_on_host == [set()] * SESSIONS_AT_SIGTERM
    assert kept == [f"session {number}\n" for number in range(SESSIONS_AT_SIGTERM)]
    assert homes == [{root_of(b_settings)}] * SESSIONS_AT_SIGTERM


def test_the_cluster_script_serves_two_instances_and_stops_everything_on_sigterm() -> None:
    port = free_port()
    cluster = subprocess.Popen(
        [sys.executable, "scripts/cluster.py", "--port", str(port)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed: list[str] = []
    try:
        assert cluster.stdout is not None
        for line in cluster.stdout:
            printed.append(line)
            if line.startswith("ready"):
                break
        urls = re.findall(r"http://127\.0\.0\.1:\d+", "".join(printed))
        folder = Path(re.findall(r"shared checkpoint folder: (\S+)", "".join(printed))[0]).parent
        made = httpx.post(f"{urls[0]}/sandboxes", json={}, timeout=120)
        listed = httpx.get(f"{urls[1]}/list", timeout=30).json()["sandboxes"]
    finally:
        cluster.send_signal(signal.SIGTERM)
        rest, _ = cluster.communicate(timeout=120)

    assert urls == [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"], printed
    assert made.status_code == 201
    assert [record["sandbox_id"] for record in listed] == [made.json()["sandbox_id"]]
    assert cluster.returncode == 0, rest
    assert "instance a stopped (exit status 0)" in rest
    assert "instance b stopped (exit status 0)" in rest
    assert not folder.exists()


# Each call waits for the pool's connection timeout while the database is down; the outage
# stays shorter than the lease, so the instance keeps its sandbox (past the lease it must
# let go of it: see the test of a paused owner).
OUTAGE_CALLS = 3
OUTAGE_LEASE_TTL_S = "120"


def exec_stdout(server: Server, sandbox_id: str, code: str) -> str | None:
    answer = server.client.post(f"/sandboxes/{sandbox_id}/exec",
                                json={"language": "bash", "code": code})
    return str(answer.json()["stdout"]) if answer.status_code == 200 else None


def test_postgresql_restarted_under_traffic_gives_clean_503s_then_everything_works_again(
    instance_settings: dict[str, Settings], own_postgres_cluster: Cluster, checkpoints: Path
) -> None:
    """While the database is down, calls that need it answer 503 with Retry-After (never a
    500, a hang or a dead server); once it is back, they work again by themselves, and the
    running sandbox lost nothing."""
    a_settings = instance_settings["a"]
    with instance("a", a_settings, own_postgres_cluster.url(), checkpoints,
                  SANDBOX_LEASE_TTL_S=OUTAGE_LEASE_TTL_S) as a:
        sandbox_id = ok(a.client.post("/sandboxes", json={}), 201)["sandbox_id"]
        bash(a.client, sandbox_id, f"echo before the outage > {NOTE}")

        own_postgres_cluster.stop()
        try:
            during = [a.client.get("/list") for _ in range(OUTAGE_CALLS)] + [
                a.client.post(f"/sandboxes/{sandbox_id}/exec",
                              json={"language": "bash", "code": f"cat {NOTE}"})
                for _ in range(OUTAGE_CALLS)]
            alive = a.client.get("/healthz").status_code
        finally:
            own_postgres_cluster.start()

        listed = eventually(lambda: a.client.get("/list").status_code == 200,
                            what="/list after the restart")
        # A pooled connection that died with the server fails one call, then is replaced.
        kept = eventually(lambda: exec_stdout(a, sandbox_id, f"cat {NOTE}"),
                          what="an exec after the restart")
        state = record(a, sandbox_id)["state"]
        ok(a.client.delete(f"/sandboxes/{sandbox_id}"))

    refused = [answer for answer in during if answer.status_code != 200]
    assert {answer.status_code for answer in refused} == {503}, [
        (answer.status_code, answer.text[:200]) for answer in refused]
    assert {answer.json()["error"]["code"] for answer in refused} == {"store_unavailable"}
    assert all(answer.headers.get("Retry-After") for answer in refused)
    assert len(refused) >= OUTAGE_CALLS  # every /list needs the database
    assert alive == 200
    assert listed is True
    assert kept == "before the outage\n"
    assert state == "running"
