"""`sbx`, the installed command, run as a process against a real server (uvicorn on a
loopback port, the fake runtime): output, exit codes, tables and JSON, and progress shown on
a terminal only."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.sdk_support import Served, served
from sandbox.adapters.fake import FakeBehaviour

SBX = str(Path(sys.executable).with_name("sbx"))
HELLO = 'print("hello")\nprint("oops", file=sys.stderr)\nsys.exit(3)\n'
BOUND_S = 60


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path) as started:
        yield started


def environment(url: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("SANDBOX_")}
    return {**env, "SANDBOX_URL": url}


def sbx(server: Served | None, *args: str, stdin: str = "",
        url: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SBX, *args], input=stdin, capture_output=True, text=True,
                          env=environment(url or (server.url if server else "")),
                          timeout=BOUND_S, check=False)


def sbx_bytes(server: Served, *args: str) -> bytes:
    done = subprocess.run([SBX, *args], capture_output=True, env=environment(server.url),
                          timeout=BOUND_S, check=True)
    return done.stdout


def test_run_prints_the_output_on_its_streams_and_exits_with_the_scripts_code(
    server: Served, tmp_path: Path
) -> None:
    script = tmp_path / "hello.py"
    script.write_text(HELLO)

    done = sbx(server, "run", str(script))

    # Piped, nothing but the script's own output: no progress, no colour.
    assert (done.returncode, done.stdout, done.stderr) == (3, "hello\n", "oops\n")


def test_run_reads_stdin_and_answers_json_for_scripts(server: Served) -> None:
    done = sbx(server, "run", "--language", "bash", "--json", "-", stdin="echo from stdin\n")

    result = json.loads(done.stdout)
    assert done.returncode == 0
    assert (result["stdout"], result["exit_code"], result["language"]) == (
        "from stdin\n", 0, "bash")


def test_run_needs_a_language_it_can_tell(server: Served, tmp_path: Path) -> None:
    script = tmp_path / "notes.txt"
    script.write_text("echo hi\n")

    done = sbx(server, "run", str(script))

    assert done.returncode == 2
    assert "give --language" in done.stderr


def test_a_script_that_times_out_exits_124_and_says_so(server: Served, tmp_path: Path) -> None:
    script = tmp_path / "slow.sh"
    script.write_text("echo before\nsleep 30\n")

    done = sbx(server, "run", "--timeout", "0.3", str(script))

    assert (done.returncode, done.stdout) == (124, "before\n")
    assert "timed out" in done.stderr


def test_a_session_is_created_listed_execed_and_removed(server: Served) -> None:
    server.runtime.program(b"", FakeBehaviour(stdout=b"argv ran\n", exit_code=5))

    sandbox_id = sbx(server, "create", "--memory", "256", "-e", "A=1").stdout.strip()
    table = sbx(server, "ls").stdout
    listed = json.loads(sbx(server, "ls", "--json").stdout)["sandboxes"]
    executed = sbx(server, "exec", sandbox_id, "--", "ls", "-l")
    info = json.loads(sbx(server, "info", "--json", sandbox_id).stdout)
    removed = sbx(server, "rm", sandbox_id)
    again = sbx(server, "rm", sandbox_id)

    assert len(sandbox_id) == 24
    assert sandbox_id in table and "running" in table and "256 MiB" in table
    assert [record["sandbox_id"] for record in listed] == [sandbox_id]
    assert (executed.returncode, executed.stdout) == (5, "argv ran\n")
    assert (info["state"], info["limits"]["memory_mb"]) == ("running", 256)
    assert (removed.returncode, removed.stdout) == (0, f"{sandbox_id} deleted\n")
    assert again.returncode == 1 and f"no sandbox {sandbox_id}" in again.stderr


def test_files_are_copied_in_and_out(server: Served, tmp_path: Path) -> None:
    sandbox_id = sbx(server, "create").stdout.strip()
    local = tmp_path / "data.bin"
    local.write_bytes(bytes(range(256)) * 500)

    copied_in = sbx(server, "cp", str(local), f"{sandbox_id}:inbox/")
    copied_out = sbx(server, "cp", f"{sandbox_id}:inbox/data.bin", str(tmp_path / "back.bin"))
    to_stdout = sbx_bytes(server, "cp", f"{sandbox_id}:inbox/data.bin", "-")
    neither = sbx(server, "cp", str(local), str(tmp_path / "x"))
    sbx(server, "rm", sandbox_id)

    assert (copied_in.returncode, copied_out.returncode) == (0, 0)
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    assert to_stdout == local.read_bytes()
    assert neither.returncode == 2 and "ID:PATH" in neither.stderr


def test_suspend_and_restore_say_the_new_state(server: Served) -> None:
    sandbox_id = sbx(server, "create").stdout.strip()

    suspended = sbx(server, "suspend", sandbox_id)
    refused = sbx(server, "exec", sandbox_id, "--", "ls")
    restored = sbx(server, "restore", "--json", sandbox_id)
    sbx(server, "rm", sandbox_id)

    assert suspended.stdout == f"{sandbox_id} suspended\n"
    assert refused.returncode == 1 and "(invalid_state)" in refused.stderr
    assert json.loads(restored.stdout)["sandboxes"][0]["state"] == "running"


def test_a_detached_script_is_followed_with_logs_and_its_code_returned(
    server: Served, tmp_path: Path
) -> None:
    script = tmp_path / "ticks.py"
    script.write_text('print("tick")\nimport time\ntime.sleep(0.3)\nprint("tock")\nexit(4)\n')

    sandbox_id = sbx(server, "run", "--detach", str(script)).stdout.strip()
    followed = sbx(server, "logs", "-f", sandbox_id)
    printed = sbx(server, "logs", sandbox_id)

    assert (followed.returncode, followed.stdout) == (4, "tick\ntock\n")
    assert printed.stdout == "tick\ntock\n"


def test_following_a_script_that_timed_out_says_why_and_exits_125(
    server: Served, tmp_path: Path
) -> None:
    script = tmp_path / "slow.sh"
    script.write_text("echo before\nsleep 30\n")

    sandbox_id = sbx(server, "run", "--detach", "--timeout", "0.3", str(script)).stdout.strip()
    followed = sbx(server, "logs", "-f", sandbox_id)

    assert (followed.returncode, followed.stdout) == (125, "before\n")
    assert "sbx: the sandbox is exited: timed out" in followed.stderr


def test_an_unreachable_server_is_one_sentence_and_a_hint(tmp_path: Path) -> None:
    done = sbx(None, "ls", url="http://127.0.0.1:9")

    assert done.returncode == 1
    assert "cannot reach the service at http://127.0.0.1:9" in done.stderr
    assert "SANDBOX_URL" in done.stderr
    assert "Traceback" not in done.stderr


def run_on_a_terminal(server: Served, *args: str) -> tuple[int, str, str]:
    """sbx with its stderr on a pseudo-terminal (stdout piped): what a person would see."""
    leader, follower = pty.openpty()
    env = {**environment(server.url), "TERM": "xterm-256color", "COLUMNS": "100"}
    with subprocess.Popen([SBX, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=follower, env=env) as process:
        os.close(follower)
        seen = bytearray()
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: sbx has ended
                break
            if not chunk:
                break
            seen += chunk
        stdout = process.stdout.read() if process.stdout else b""
        code = process.wait(timeout=BOUND_S)
    os.close(leader)
    return code, stdout.decode(), seen.decode(errors="replace")


def test_waits_for_room_show_on_a_terminal_and_not_when_piped(tmp_path: Path) -> None:
    slow = b"# holds the only place for a while\n"
    with served(tmp_path, max_concurrent_executions=1, capacity_wait_s=0) as server:
        server.runtime.program(slow, FakeBehaviour(stdout=b"slow done\n", sleep_s=1.5))
        script = tmp_path / "hello.sh"
        script.write_text("echo hello\n")

        def hold() -> None:
            httpx.post(f"{server.url}/execute", params={"language": "python"}, content=slow,
                       timeout=BOUND_S)

        for runner in ("terminal", "piped"):
            holder = threading.Thread(target=hold)
            holder.start()
            wait_until_busy(server)
            if runner == "terminal":
                code, stdout, screen = run_on_a_terminal(server, "run", str(script))
            else:
                piped = sbx(server, "run", str(script))
                code, stdout, screen = piped.returncode, piped.stdout, piped.stderr
            holder.join(BOUND_S)
            assert (code, stdout) == (0, "hello\n"), runner
            if runner == "terminal":
                assert "at capacity" in screen
            else:
                assert screen == ""


def wait_until_busy(server: Served) -> None:
    for _ in range(200):
        if server.runtime.live:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the holding script did not start")
