"""The SDK against a real server (uvicorn on a loopback port, the fake runtime): every call
of the client through HTTP, its errors and its retries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.sdk_support import Served, needs_templates, served
from sandbox.adapters.fake import FakeBehaviour
from sandbox_client import (
    AsyncSandbox,
    CapacityExceeded,
    Execution,
    FileNotFound,
    InvalidRequest,
    InvalidState,
    Sandbox,
    SandboxNotFound,
    Unauthorized,
    arun,
    run,
)

TOKEN = "a-token-of-sixteen-or-more"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path) as started:
        yield started


def test_run_returns_the_scripts_output_and_exit_code(server: Served) -> None:
    done = run('print("hello")\nprint("oops", file=sys.stderr)\nsys.exit(3)\n',
               config=server.config())

    assert (done.exit_code, done.stdout, done.stderr, done.ok) == (3, "hello\n", "oops\n", False)
    assert len(done.sandbox_id) == 24


def test_run_streams_output_to_callbacks_in_order(server: Served) -> None:
    seen: list[tuple[str, str]] = []

    done = run("echo one\necho two >&2\necho three\n", "bash",
               on_stdout=lambda text: seen.append(("out", text)),
               on_stderr=lambda text: seen.append(("err", text)), config=server.config())

    assert seen == [("out", "one\n"), ("err", "two\n"), ("out", "three\n")]
    assert (done.exit_code, done.stdout) == (0, "one\nthree\n")


def test_a_script_over_its_time_limit_is_a_timed_out_result(server: Served) -> None:
    done = run("import time\ntime.sleep(30)\n", timeout=0.2, config=server.config())

    assert (done.exit_code, done.timed_out) == (None, True)


def test_a_bad_requirement_is_an_invalid_request(server: Served) -> None:
    with pytest.raises(InvalidRequest, match="requirement"):
        run("print(1)", packages=["six @ https://example.invalid/six.whl"],
            config=server.config())


def test_a_sandbox_lives_through_commands_files_suspend_and_resume(
    server: Served, tmp_path: Path
) -> None:
    local = tmp_path / "data.bin"
    local.write_bytes(bytes(range(256)) * 300)

    with Sandbox.create(env={"COLOUR": "blue"}, idle_timeout=60,
                        config=server.config()) as sandbox:
        echoed = sandbox.commands.run("echo hi")
        sandbox.files.write("notes/a.txt", "héllo")
        sandbox.files.upload(local)
        suspended = sandbox.suspend()
        resumed = sandbox.resume()
        text = sandbox.files.read("notes/a.txt")
        copy = sandbox.files.download("data.bin", tmp_path / "copy.bin")
        listed = sorted(entry.name for entry in sandbox.files.list())
        info = sandbox.info()

    assert (echoed.exit_code, echoed.stdout) == (0, "hi\n")
    assert (suspended.state, resumed.state, info.state) == ("suspended", "running", "running")
    assert (text, copy.read_bytes()) == ("héllo", local.read_bytes())
    assert listed == ["data.bin"]  # the fake lists files, not folders
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(sandbox.sandbox_id, config=server.config())


def test_sandboxes_are_listed_by_state(server: Served) -> None:
    with Sandbox.create(config=server.config()) as running, \
            Sandbox.create(config=server.config()) as resting:
        resting.suspend()

        listed = {info.sandbox_id: info.state
                  for info in Sandbox.list(state="suspended", config=server.config())}

    assert listed == {resting.sandbox_id: "suspended"}
    assert running.sandbox_id not in listed


def test_errors_of_the_service_are_its_exceptions(server: Served) -> None:
    with Sandbox.create(config=server.config()) as sandbox:
        with pytest.raises(FileNotFound):
            sandbox.files.read("nothing-here")
        sandbox.suspend()
        with pytest.raises(InvalidState):
            sandbox.commands.run("echo no")
        with pytest.raises(InvalidState):
            sandbox.suspend()
    with pytest.raises(SandboxNotFound):
        Sandbox.connect("0" * 24, config=server.config())
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(sandbox.sandbox_id, config=server.config())


def test_a_background_command_runs_on_and_kill_ends_it(server: Served) -> None:
    printed = threading.Event()
    with Sandbox.create(config=server.config()) as sandbox:
        handle = sandbox.commands.run("echo started\nsleep 30\n", background=True,
                                      on_stdout=lambda _: printed.set())
        with pytest.raises(InvalidState):
            sandbox.suspend()  # an exec runs
        assert printed.wait(10)

        handle.kill()
        done = handle.wait(timeout=10)
        suspended = eventually_suspended(sandbox)

    assert (done.killed, done.stdout) == (True, "started\n")
    assert suspended


def eventually_suspended(sandbox: Sandbox, within_s: float = 10.0) -> bool:
    """The server notices a client that left at its next read: a bounded wait for it."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            return sandbox.suspend().state == "suspended"
        except InvalidState:
            time.sleep(0.05)
    return False


def test_a_detached_script_is_followed_to_its_end(server: Served) -> None:
    script = 'print("tick")\nimport time\ntime.sleep(0.3)\nprint("tock")\n'
    seen: list[str] = []

    with Sandbox.run_detached(script, config=server.config()) as sandbox:
        output = sandbox.logs(follow=True, on_stdout=seen.append)
        again = sandbox.logs()

    assert "".join(seen) == "tick\ntock\n"
    assert (output.state, output.exit_code, again.stdout) == ("exited", 0, "tick\ntock\n")


def test_a_token_is_asked_for_and_taken(tmp_path: Path) -> None:
    with served(tmp_path, api_tokens=TOKEN) as server:
        with pytest.raises(Unauthorized):
            Sandbox.list(config=server.config())
        with pytest.raises(Unauthorized):
            Sandbox.list(config=server.config(api_token="wrong-token-of-sixteen"))

        assert Sandbox.list(config=server.config(api_token=TOKEN)) == []


def test_at_capacity_the_sdk_retries_then_raises_with_retry_after(tmp_path: Path) -> None:
    waits: list[float] = []
    with served(tmp_path, max_running_sandboxes=1, capacity_wait_s=0) as server:
        config = server.config(max_retries=2, max_retry_wait=0.01,
                               on_retry=lambda wait, _: waits.append(wait))
        with Sandbox.create(config=config), pytest.raises(CapacityExceeded) as raised:
            Sandbox.create(config=config)

    assert raised.value.retry_after is not None and raised.value.retry_after >= 1
    assert waits == [0.01, 0.01]


def test_a_429_followed_by_room_succeeds(tmp_path: Path) -> None:
    with served(tmp_path, max_running_sandboxes=1, capacity_wait_s=0) as server:
        first = Sandbox.create(config=server.config())

        def make_room(wait: float, reason: str) -> None:
            first.kill()
            first.close()

        with Sandbox.create(config=server.config(on_retry=make_room,
                                                 max_retry_wait=0.01)) as second:
            assert second.info().state == "running"


@pytest.mark.anyio
async def test_the_async_client_does_the_same_through_http(server: Served) -> None:
    server.runtime.program(b"slow\n", FakeBehaviour(stdout=b"done\n", sleep_s=0.1))
    chunks: list[str] = []

    async def collect(text: str) -> None:
        chunks.append(text)

    done = await arun("slow\n", on_stdout=collect, config=server.config())
    async with await AsyncSandbox.create(config=server.config()) as sandbox:
        await sandbox.files.write("a.txt", "x")
        listed = [entry.path for entry in await sandbox.files.list()]
        handle = await sandbox.commands.run("sleep 30", background=True)
        killed = await handle.kill()
        echoed = await sandbox.commands.run("echo hi", on_stdout=collect)

    assert (done.stdout, chunks) == ("done\n", ["done\n", "hi\n"])
    assert listed == ["/workspace/a.txt"]
    assert killed and echoed.stdout == "hi\n"


def test_code_contexts_are_made_run_restarted_and_deleted_through_the_sdk(
    server: Served,
) -> None:
    # The calls only: what cells answer is checked below (in the fake runtime's tiny
    # language) and on real gVisor, where Python runs (tests/integration/test_sdk_runsc.py).
    with Sandbox.create(config=server.config()) as sandbox:
        context = sandbox.create_context()
        execution = sandbox.run_code("1 + 1", context)
        streamed = sandbox.run_code("1 + 1", context, on_stdout=lambda _: None)
        listed = [item.context_id for item in sandbox.list_contexts()]
        context.interrupt()
        context.restart()
        context.delete()
        after = [item.context_id for item in sandbox.list_contexts()]

    assert isinstance(execution.results, list) and isinstance(streamed.results, list)
    assert listed == [context.context_id]
    assert after == []


def test_a_cells_value_html_output_and_error_come_back_as_the_sdks_objects(
    server: Served,
) -> None:
    # The fake runtime's contexts speak a tiny language (sandbox/adapters/fake_contexts.py).
    shown: list[str | None] = []
    printed: list[str] = []
    with Sandbox.create(config=server.config()) as sandbox:
        value = sandbox.run_code("x = 2\nx + 3")
        html = sandbox.run_code('print("hi")\nHTML("<b>x</b>")', on_stdout=printed.append,
                                on_result=lambda result: shown.append(result.html))
        failed = sandbox.run_code('raise ValueError("bad")')
        kept = sandbox.run_code("x")
        timed_out = sandbox.run_code("while True: pass", timeout=0.2)

    assert (value.text, value.execution_count) == ("5", 1)
    assert (html.logs.stdout, printed, shown) == (["hi\n"], ["hi\n"], ["<b>x</b>"])
    assert html.results[0].is_main_result and html.error is None
    assert failed.error is not None
    assert (failed.error.name, failed.error.value) == ("ValueError", "bad")
    assert (kept.text, kept.execution_count) == ("2", 4)
    assert timed_out.error is not None and timed_out.error.name == "TimeoutError"


def test_interrupt_stops_a_running_cell_and_keeps_the_context(server: Served) -> None:
    with Sandbox.create(config=server.config()) as sandbox:
        context = sandbox.create_context()
        sandbox.run_code("kept = 7", context)
        ran: list[Execution] = []
        cell = threading.Thread(target=lambda: ran.append(
            sandbox.run_code("while True: pass", context, timeout=60)))
        cell.start()
        for _ in range(200):  # until the cell has started and been interrupted
            context.interrupt()
            cell.join(0.05)
            if not cell.is_alive():
                break
        after = sandbox.run_code("kept", context)

    [interrupted] = ran
    assert interrupted.error is not None and interrupted.error.name == "KeyboardInterrupt"
    assert after.text == "7"


@pytest.mark.anyio
async def test_the_async_client_runs_cells_in_its_contexts(server: Served) -> None:
    async with await AsyncSandbox.create(config=server.config()) as sandbox:
        context = await sandbox.create_context()
        await sandbox.run_code("y = 40", context)
        value = await sandbox.run_code("y + 2", context)
        listed = [item.context_id for item in await sandbox.list_contexts()]
        await context.restart()
        forgotten = await sandbox.run_code("y", context)
        await context.delete()
        after = await sandbox.list_contexts()

    assert value.text == "42"
    assert listed == [context.context_id]
    assert forgotten.error is not None and forgotten.error.name == "NameError"
    assert after == []


@needs_templates
def test_a_snapshot_starts_sandboxes_and_a_fork_goes_on_from_one(server: Served) -> None:
    with Sandbox.create(config=server.config()) as sandbox:
        sandbox.files.write("kept.txt", "from the template")
        template = sandbox.snapshot()
        forks = sandbox.fork(2)
    with Sandbox.create(template=template.template_id, config=server.config()) as started:
        started_text = started.files.read("kept.txt")
    forked_texts = [fork.files.read("kept.txt") for fork in forks]
    for fork in forks:
        fork.kill()
    listed = [item.template_id for item in Sandbox.list_templates(config=server.config())]
    Sandbox.delete_template(template.template_id, config=server.config())

    assert started_text == "from the template"
    assert forked_texts == ["from the template"] * 2
    assert template.template_id in listed
