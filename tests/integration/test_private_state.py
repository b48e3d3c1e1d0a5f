"""Under a umask that would let every local user read them, the state folder and what the
server keeps in it (records, env values in bundles, output, checkpoints) stay the server's
user's alone, and sandboxes still read their scripts and packages through it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.support import managed_sandboxes, runtime_settings, started_runtime
from sandbox.domain.lifecycle.creation import create_session
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.execution import run_script
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.model import Language, Limits
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def open_to_others(state: Path) -> list[str]:
    """What under the state folder has any permission for users other than the server's
    (each layer is checked, not only the state folder that already keeps them out)."""
    found = []
    for path in [state, *state.rglob("*")]:
        if stat.S_IMODE(path.lstat().st_mode) & 0o077 and not path.is_symlink():
            found.append(str(path.relative_to(state.parent)))
    return found


@pytest.mark.usefixtures("permissive_umask")
async def test_the_state_folder_stays_private_while_sandboxes_run_and_suspend(
    tmp_path: Path, limits: Limits
) -> None:
    settings: Settings = runtime_settings(tmp_path / "state")
    async with started_runtime(settings) as runtime:
        ran = await run_script(
            runtime, Language.PYTHON, b"import os\nprint(len(open(__file__).read()))\n", limits
        )
        async with managed_sandboxes(runtime, settings) as sandboxes:
            session = await create_session(sandboxes,
                Language.PYTHON, limits, env=(("API_KEY", "secret"),)
            )
            suspended = await suspend_sandbox(sandboxes, session.sandbox_id)
            exposed = open_to_others(settings.state_dir)
            assert suspended.checkpoint is not None
            modes = {path.name: stat.S_IMODE(path.stat().st_mode)
                     for path in (settings.checkpoints / suspended.checkpoint).iterdir()}
            await delete_sandbox(sandboxes, session.sandbox_id)

    assert ran.outcome.exit_code == 0
    # The session's input folder: the sandbox's user reads its scripts there.
    assert exposed == [f"state/bundles/{session.sandbox_id}/input"]
    assert set(modes.values()) == {0o600}
