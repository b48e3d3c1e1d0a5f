"""The async client mirrors the sync one; both background handles end a command that would
run for ever by closing its stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from client_support import SANDBOX_ID, FakeApi, error, ndjson, record, result

from sandbox_client import AsyncSandbox, InvalidState, Sandbox, arun

pytestmark = pytest.mark.anyio
BASE = f"/sandboxes/{SANDBOX_ID}"


@pytest.fixture
def api() -> FakeApi:
    return (FakeApi()
            .on("POST", "/sandboxes", status_code=201, json=record())
            .on("GET", BASE, json=record())
            .on("DELETE", BASE, json={"sandbox_id": SANDBOX_ID, "deleted": True}))


def endless(request: httpx.Request) -> httpx.Response:
    """An exec that started, printed, and never ends (until its client leaves)."""

    async def body() -> AsyncIterator[bytes]:
        yield ndjson({"type": "start", "sandbox_id": SANDBOX_ID},
                     {"type": "stdout", "data": "partial\n"})
        await asyncio.Event().wait()

    return httpx.Response(200, content=body())


async def test_arun_awaits_coroutine_callbacks() -> None:
    api = FakeApi().on("POST", "/execute", content=ndjson(
        {"type": "stdout", "data": "x"}, {"type": "exit", "exit_code": 0}))
    seen: list[str] = []

    async def collect(text: str) -> None:
        await asyncio.sleep(0)
        seen.append(text)

    done = await arun("print('x')", on_stdout=collect, config=api.config())

    assert (done.stdout, seen) == ("x", ["x"])


async def test_an_async_sandbox_runs_commands_and_moves_files(
    api: FakeApi, tmp_path: Path
) -> None:
    api.on("POST", f"{BASE}/exec", json=result(stdout="4\n"))
    api.on("PUT", f"{BASE}/files/in.txt", status_code=201,
           json={"path": "/workspace/in.txt", "size": 3})
    api.on("GET", f"{BASE}/files/in.txt", content=b"abc")
    local = tmp_path / "in.txt"
    local.write_bytes(b"abc")

    async with await AsyncSandbox.create(config=api.config()) as sandbox:
        done = await sandbox.commands.run(["python3", "-c", "print(2 + 2)"])
        uploaded = await sandbox.files.upload(local)
        text = await sandbox.files.read("in.txt")
        copy = await sandbox.files.download("in.txt", tmp_path / "out.txt")

    assert done.stdout == "4\n"
    assert (uploaded.size, text, copy.read_bytes()) == (3, "abc", b"abc")
    assert [request.method for request in api.requests][-1] == "DELETE"


async def test_an_async_background_command_is_killed_by_closing_its_stream(
    api: FakeApi,
) -> None:
    api.on("POST", f"{BASE}/exec", endless)
    sandbox = await AsyncSandbox.connect(SANDBOX_ID, config=api.config())

    handle = await sandbox.commands.run("sleep infinity", background=True)
    killed = await handle.kill()
    done = await handle.wait(timeout=10)

    assert killed and handle.done
    assert (done.killed, done.exit_code, done.stdout) == (True, None, "partial\n")
    await sandbox.close()


async def test_an_async_background_command_refused_raises_at_once(api: FakeApi) -> None:
    api.on("POST", f"{BASE}/exec", error(409, "invalid_state", "suspended"))
    sandbox = await AsyncSandbox.connect(SANDBOX_ID, config=api.config())

    with pytest.raises(InvalidState):
        await sandbox.commands.run("true", background=True)
    await sandbox.close()


async def test_async_contexts_run_cells(api: FakeApi) -> None:
    api.on("POST", f"{BASE}/contexts", status_code=201, json={"context_id": "c1"})
    api.on("POST", f"{BASE}/contexts/c1/run", json={
        "execution_count": 2, "results": [{"text/plain": "2"}], "stdout": "", "stderr": "",
        "error": None})
    sandbox = await AsyncSandbox.connect(SANDBOX_ID, config=api.config())

    context = await sandbox.create_context()
    execution = await context.run("1 + 1")

    assert (context.language, execution.text, execution.execution_count) == ("python", "2", 2)
    await sandbox.close()


def test_a_sync_background_command_is_killed_by_closing_its_stream(api: FakeApi) -> None:
    api.on("POST", f"{BASE}/exec", endless)
    seen: list[str] = []
    sandbox = Sandbox.connect(SANDBOX_ID, config=api.config())

    handle = sandbox.commands.run("sleep infinity", background=True, on_stdout=seen.append)
    killed = handle.kill()
    done = handle.wait(timeout=10)

    assert killed and handle.done
    assert (done.killed, done.exit_code, done.stdout) == (True, None, "partial\n")
    assert seen == ["partial\n"]


def test_waiting_for_a_background_command_can_give_up(api: FakeApi) -> None:
    api.on("POST", f"{BASE}/exec", endless)
    handle = Sandbox.connect(SANDBOX_ID, config=api.config()).commands.run(
        "sleep infinity", background=True)

    with pytest.raises(TimeoutError):
        handle.wait(timeout=0.01)

    handle.kill()
    assert handle.wait(timeout=10).killed
