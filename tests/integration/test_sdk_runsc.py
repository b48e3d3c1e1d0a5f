"""The SDK, sbx and the examples against a real server (`python -m sandbox`) on real gVisor.

One server for the module; each test deletes what it made, and the module ends with no
record on the server and nothing of it left on the host."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from e2e.sdk_support import needs_templates

from integration.server import Server, destroy_leftovers, records, serving
from integration.support import leftovers, require_runsc, runtime_settings
from sandbox_client import (
    AsyncSandbox,
    ConnectionConfig,
    InvalidState,
    Sandbox,
    arun,
    run,
)

pytestmark = pytest.mark.runsc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "example"
SBX = str(Path(sys.executable).with_name("sbx"))
BOUND_S = 180
# The rootfs has no pgrep.
COUNT_SLEEPS = ("import os\n"
                "print(sum(open(f'/proc/{pid}/cmdline', 'rb').read().startswith(b'sleep')\n"
                "          for pid in os.listdir('/proc') if pid.isdigit()))")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_runsc()
    folder = tmp_path_factory.mktemp("sdk")
    settings = runtime_settings(folder / "state")
    try:
        with serving(settings, folder / "server.log") as started:
            yield started
            left_on_server = records(started.client)
        assert left_on_server == {}
        assert leftovers(settings) == []
    finally:
        destroy_leftovers(settings)


@pytest.fixture
def config(server: Server) -> ConnectionConfig:
    return ConnectionConfig(url=str(server.client.base_url).rstrip("/"))


def environment(config: ConnectionConfig) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("SANDBOX_")}
    return {**env, "SANDBOX_URL": config.url}


def sbx(config: ConnectionConfig, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([SBX, *args], input=stdin, capture_output=True, text=True,
                          env=environment(config), timeout=BOUND_S, check=False)


def example(config: ConnectionConfig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env=environment(config), timeout=BOUND_S, check=False)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking every chunk and inflating its pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, pixels, header = 8, b"", (0, 0, 0, 0)
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        if kind == b"IHDR":
            header = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            pixels += body
        offset += 12 + length
    width, height, depth, colour = header
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    assert len(zlib.decompress(pixels)) == height * (1 + width * channels * depth // 8)
    return width, height


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_runs_python_and_bash_in_gvisor_with_output_in_order(
    config: ConnectionConfig,
) -> None:
    seen: list[tuple[str, str]] = []
    script = ("import sys, time\nprint('one', flush=True)\ntime.sleep(0.2)\n"
              "print('two', file=sys.stderr, flush=True)\ntime.sleep(0.2)\nprint('three')\n")

    python = run(script, on_stdout=lambda text: seen.append(("out", text)),
                 on_stderr=lambda text: seen.append(("err", text)), config=config)
    bash = run("echo $BASH_VERSION; exit 7", "bash", config=config)
    version = run("import sys; print(sys.version_info[:2])", config=config)

    assert seen == [("out", "one\n"), ("err", "two\n"), ("out", "three\n")]
    assert python.exit_code == 0
    assert bash.exit_code == 7 and bash.stdout.startswith("5.")
    assert version.stdout == "(3, 11)\n"


def test_a_session_keeps_files_across_suspend_and_commands_get_env_and_folder(
    config: ConnectionConfig, tmp_path: Path
) -> None:
    payload = random.Random(11).randbytes(1024 * 1024)
    local = tmp_path / "blob.bin"
    local.write_bytes(payload)

    with Sandbox.create(env={"COLOUR": "blue"}, config=config) as sandbox:
        sandbox.files.upload(local)
        sandbox.files.write("notes/a.txt", "héllo")
        digest = sandbox.commands.run(["sha256sum", "blob.bin"])
        suspended = sandbox.suspend()
        resumed = sandbox.resume()
        text = sandbox.files.read("notes/a.txt")
        copy = sandbox.files.download("blob.bin", tmp_path / "copy.bin")
        env = sandbox.commands.run("echo $COLOUR $SIZE; pwd", env={"COLOUR": "red",
                                                                  "SIZE": "L"}, cwd="/tmp")
        python = sandbox.commands.run("import os\nprint(os.getcwd(), os.environ['COLOUR'])",
                                      language="python", cwd="notes")

    assert digest.stdout.split()[0] == __import__("hashlib").sha256(payload).hexdigest()
    assert (suspended.state, resumed.state) == ("suspended", "running")
    assert (text, copy.read_bytes() == payload) == ("héllo", True)
    assert env.stdout == "red L\n/tmp\n"
    assert python.stdout == "/workspace/notes blue\n"


def test_a_background_command_is_killed_and_the_sandbox_goes_on(
    config: ConnectionConfig,
) -> None:
    printed = threading.Event()
    with Sandbox.create(config=config) as sandbox:
        handle = sandbox.commands.run("echo started; sleep 60", background=True,
                                      on_stdout=lambda _: printed.set())
        assert printed.wait(60)
        handle.kill()
        done = handle.wait(timeout=60)
        after = sandbox.commands.run("echo after; python3 -c \"$COUNT\"",
                                     env={"COUNT": COUNT_SLEEPS})
        suspended = eventually_suspended(sandbox)

    assert (done.killed, done.stdout) == (True, "started\n")
    assert after.stdout == "after\n0\n"  # the killed command's process group went with it
    assert suspended


def eventually_suspended(sandbox: Sandbox, within_s: float = 30.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            return sandbox.suspend().state == "suspended"
        except InvalidState:
            time.sleep(0.1)
    return False


def test_the_async_client_on_gvisor(config: ConnectionConfig, tmp_path: Path) -> None:
    async def scenario() -> tuple[str, bytes, str]:
        done = await arun("print(sum(range(10)))", config=config)
        async with await AsyncSandbox.create(config=config) as sandbox:
            await sandbox.files.write("x.bin", bytes(range(256)))
            copy = await sandbox.files.download("x.bin", tmp_path / "x.bin")
            counted = await sandbox.commands.run(["wc", "-c", "x.bin"])
        return done.stdout, copy.read_bytes(), counted.stdout

    stdout, copied, counted = asyncio.run(scenario())

    assert (stdout, copied, counted) == ("45\n", bytes(range(256)), "256 x.bin\n")


def test_sbx_runs_files_and_exits_with_their_code(config: ConnectionConfig) -> None:
    hello = sbx(config, "run", str(EXAMPLES / "test_hello.py"))
    failing = sbx(config, "run", str(EXAMPLES / "failing.py"))
    bash = sbx(config, "run", str(EXAMPLES / "hello.sh"))
    slow = sbx(config, "run", "--timeout", "2", str(EXAMPLES / "too_slow.py"))

    assert hello.returncode == 0 and "Hello from a gVisor sandbox" in hello.stdout
    assert failing.returncode == 1 and "ZeroDivisionError" in failing.stderr
    assert bash.returncode == 0 and "5 squared is 25" in bash.stdout
    assert slow.returncode == 124 and "tick 0" in slow.stdout and "timed out" in slow.stderr


def test_sbx_session_exec_copy_logs_and_rm(config: ConnectionConfig, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("three words here\n")
    sandbox_id = sbx(config, "create").stdout.strip()

    copied_in = sbx(config, "cp", str(tmp_path / "in.txt"), f"{sandbox_id}:in.txt")
    counted = sbx(config, "exec", sandbox_id, "--", "wc", "-w", "in.txt")
    failed = sbx(config, "exec", sandbox_id, "--", "python3", "-c", "raise SystemExit(9)")
    written = sbx(config, "exec", sandbox_id, "--", "sh", "-c", "echo out > out.txt")
    copied_out = sbx(config, "cp", f"{sandbox_id}:out.txt", str(tmp_path / "out.txt"))
    removed = sbx(config, "rm", sandbox_id)
    script = tmp_path / "ticks.py"
    script.write_text("import time\nfor n in range(3):\n    print(n, flush=True)\n"
                      "    time.sleep(0.2)\nraise SystemExit(3)\n")
    detached = sbx(config, "run", "--detach", str(script)).stdout.strip()
    followed = sbx(config, "logs", "-f", detached)
    sbx(config, "rm", detached)

    assert (copied_in.returncode, copied_out.returncode, written.returncode) == (0, 0, 0)
    assert counted.stdout == "3 in.txt\n"
    assert failed.returncode == 9
    assert (tmp_path / "out.txt").read_text() == "out\n"
    assert removed.stdout == f"{sandbox_id} deleted\n"
    assert (followed.returncode, followed.stdout) == (3, "0\n1\n2\n")


def test_the_sdk_walkthrough_runs_to_its_end(config: ConnectionConfig) -> None:
    done = example(config, "example/sdk_walkthrough.py")

    assert done.returncode == 0, done.stderr
    for line in ("sum of the uploaded numbers: 5050", "hello walkthrough from /tmp",
                 "files survive: ['data.csv', 'numbers.txt']", "walkthrough done"):
        assert line in done.stdout


def test_the_grader_grades_the_sample_student(config: ConnectionConfig, tmp_path: Path) -> None:
    graded = example(config, "example/grader.py", "example/grading/student.py",
                     "example/grading/test_student.py")
    looping = tmp_path / "looping.py"
    looping.write_text("while True:\n    pass\n")
    stuck = example(config, "example/grader.py", str(looping),
                    "example/grading/test_student.py", "--timeout", "3")

    assert graded.returncode == 1, graded.stderr
    assert "failed  test_student.MedianTest.test_median_of_an_even_count" in graded.stdout
    assert "score: 4/5" in graded.stdout
    assert stuck.returncode == 1 and "did not finish within 3 s" in stuck.stderr


def test_the_code_interpreters_cells_make_a_figure_as_one_script(
    config: ConnectionConfig,
) -> None:
    # The same cells as a one-shot script (no context): the example's figure does not
    # depend on the context's inline backend.
    cells = load_example("code_interpreter").CELLS
    script = "\n".join([*cells, "import io, base64", "buffer = io.BytesIO()",
                        "plt.savefig(buffer, format='png')",
                        "print(base64.b64encode(buffer.getvalue()).decode())"])

    done = run(script, timeout=120, config=config)

    assert done.exit_code == 0, done.stderr
    width, height = png_size(__import__("base64").b64decode(done.stdout.splitlines()[-1]))
    assert width > 100 and height > 100


def test_the_code_interpreter_example_saves_a_png_that_decodes(
    config: ConnectionConfig, tmp_path: Path
) -> None:
    done = example(config, "example/code_interpreter.py", str(tmp_path))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "an HTML table" in done.stdout
    assert "90 rows still here" in done.stdout
    [figure] = list(tmp_path.glob("*.png"))
    assert min(png_size(figure.read_bytes())) > 100


def test_variables_survive_a_suspend_and_restore_of_the_sandbox(
    config: ConnectionConfig,
) -> None:
    with Sandbox.create(config=config) as sandbox:
        sandbox.run_code("import random\nsecret = random.random()\nhistory = [1, 2]")
        before = sandbox.run_code("secret").text
        sandbox.suspend()
        sandbox.resume()
        after = sandbox.run_code("history.append(3); secret, history")

    assert before is not None
    assert after.text == f"({before}, [1, 2, 3])"


def test_sbx_repl_keeps_variables_and_saves_figures(
    config: ConnectionConfig, tmp_path: Path
) -> None:
    sandbox_id = sbx(config, "create").stdout.strip()
    lines = ["import matplotlib.pyplot as plt", "x = 20", "x * 2 + 2",
             "plt.plot([1, 3, 2])"]

    done = sbx(config, "repl", sandbox_id, "--plots", str(tmp_path),
               stdin="\n".join(lines) + "\n")
    sbx(config, "rm", sandbox_id)

    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout
    [figure] = list(tmp_path.glob("*.png"))
    assert min(png_size(figure.read_bytes())) > 100


@needs_templates
def test_a_template_and_forks_go_on_from_a_sandboxs_state(config: ConnectionConfig) -> None:
    with Sandbox.create(config=config) as sandbox:
        sandbox.files.write("kept.txt", "state")
        template = sandbox.snapshot()
        forks = sandbox.fork(2)
    with Sandbox.create(template=template.template_id, config=config) as started:
        started_text = started.files.read("kept.txt")
    forked = []
    for fork in forks:
        with fork:
            forked.append(fork.files.read("kept.txt"))
    Sandbox.delete_template(template.template_id, config=config)

    assert (started_text, forked) == ("state", ["state", "state"])
