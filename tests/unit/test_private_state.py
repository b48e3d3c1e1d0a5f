"""The state folder is the server's user's alone, whatever the umask, and is tightened again
at every start: it holds sessions' env values (often secrets), scripts, output, and
checkpoints (a sandbox's whole memory)."""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.adapters.file_output_log import FileOutputLog
from sandbox.adapters.runsc import cgroups
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.adapters.sqlite_store import SqliteSandboxStore
from sandbox.domain.model import (
    Language,
    Program,
    Sandbox,
    SandboxKind,
    SandboxSpec,
    SandboxState,
    Stream,
)
from sandbox.settings import Settings

DEFAULT_LIMITS = Settings().default_limits()

pytestmark = pytest.mark.anyio

SANDBOX = "0123456789abcdef01234567"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(Settings.from_env({}), runtime="runsc",
                               state_dir=tmp_path / "state",
                               runsc_path=str(tmp_path / "no-runsc"))


@pytest.fixture
def runtime(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> RunscSandboxRuntime:
    """The runsc runtime, started without runsc and without touching the host's cgroups."""
    monkeypatch.setattr(cgroups, "detect", lambda parent, root=None: cgroups.NoCgroups())
    return RunscSandboxRuntime(settings)


def a_record() -> Sandbox:
    return Sandbox(sandbox_id=SANDBOX, kind=SandboxKind.SESSION, state=SandboxState.RUNNING,
                   language=None, limits=DEFAULT_LIMITS, created_at=0.0, updated_at=0.0,
                   env=(("API_KEY", "secret"),))


@pytest.mark.usefixtures("permissive_umask")
async def test_the_store_makes_its_folder_database_and_journal_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = SqliteSandboxStore(state / "sandboxes.db")
    try:
        await store.add(a_record())
        files = sorted(path.name for path in state.iterdir())
        modes = {path.name: mode(path) for path in state.iterdir()}
    finally:
        store.close()

    assert files == ["sandboxes.db", "sandboxes.db-shm", "sandboxes.db-wal"]
    assert mode(state) == 0o700
    assert modes == dict.fromkeys(files, 0o600)


async def test_the_store_tightens_what_an_earlier_start_left_open(tmp_path: Path) -> None:
    state = tmp_path / "state"
    SqliteSandboxStore(state / "sandboxes.db").close()
    state.chmod(0o755)
    for name in ("sandboxes.db", "sandboxes.db-wal", "sandboxes.db-shm"):
        (state / name).touch()
        (state / name).chmod(0o644)

    SqliteSandboxStore(state / "sandboxes.db").close()

    assert mode(state) == 0o700
    assert {mode(path) for path in state.iterdir()} == {0o600}


@pytest.mark.usefixtures("permissive_umask")
async def test_detached_output_is_private(tmp_path: Path) -> None:
    outputs = FileOutputLog(tmp_path / "outputs")

    await outputs.sink(SANDBOX, 4).write(Stream.STDOUT, b"secret!")

    folder = tmp_path / "outputs" / SANDBOX
    assert mode(tmp_path / "outputs") == 0o700
    assert mode(folder) == 0o700
    assert {path.name: mode(path) for path in folder.iterdir()} == {
        "stdout": 0o600, "stdout.truncated": 0o600,
    }


async def test_the_output_folder_is_tightened_at_start(tmp_path: Path) -> None:
    (tmp_path / "outputs").mkdir(mode=0o755)

    FileOutputLog(tmp_path / "outputs")

    assert mode(tmp_path / "outputs") == 0o700


@pytest.mark.usefixtures("permissive_umask")
async def test_the_runtime_makes_its_state_folders_private(
    runtime: RunscSandboxRuntime, settings: Settings
) -> None:
    await runtime.start()

    state = settings.state_dir
    for folder in (state, state / "runsc", state / "bundles", state / "packages",
                   state / "images"):
        assert mode(folder) == 0o700, folder


async def test_the_runtime_tightens_folders_and_checkpoint_images_left_open(
    runtime: RunscSandboxRuntime, settings: Settings
) -> None:
    state = settings.state_dir
    image = state / "images" / SANDBOX
    image.mkdir(parents=True)
    (image / "checkpoint.img").write_bytes(b"memory")
    for path in (state, state / "images", image, image / "checkpoint.img"):
        path.chmod(0o755)
    (state / "bundles").mkdir(mode=0o777)
    (state / "bundles").chmod(0o777)

    await runtime.start()

    assert [mode(path) for path in (state, state / "images", image, state / "bundles")] == [
        0o700, 0o700, 0o700, 0o700]
    assert mode(image / "checkpoint.img") == 0o600


@pytest.mark.usefixtures("permissive_umask")
async def test_a_bundle_is_private_but_its_scripts_stay_readable_inside_the_sandbox(
    runtime: RunscSandboxRuntime,
) -> None:
    await runtime.start()
    spec = SandboxSpec(sandbox_id=SANDBOX, limits=DEFAULT_LIMITS, env=(("API_KEY", "secret"),))
    program = Program.script(Language.PYTHON, b"print(1)")

    bundle = runtime.write_bundle(spec, program)
    _argv, exec_script = runtime._bundles.exec_argv(SANDBOX, program)
    assert exec_script is not None

    assert mode(bundle) == 0o700
    assert mode(bundle / "config.json") == 0o600
    assert mode(bundle / "limits.json") == 0o600
    # The sandbox's user (not the host's root) reads these through the input mount.
    assert mode(bundle / "input") == 0o755
    assert mode(bundle / "input" / "main.py") == 0o644
    assert mode(exec_script) == 0o644
