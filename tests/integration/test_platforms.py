"""gVisor's platform per use: sessions (which mostly wait) on SANDBOX_SESSION_PLATFORM,
scripts on SANDBOX_RUNSC_PLATFORM; a checkpoint is restored on the platform it was made on."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.adapters.runsc.runtime import PLATFORM_FILE
from sandbox.domain.lifecycle.creation import create_session, run_detached
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.lifecycle.work import exec_in_sandbox
from sandbox.domain.model import Language, Limits, Program
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]


def platform_of(settings: Settings, sandbox_id: str) -> str:
    """The --platform of the runsc process that supervises the sandbox (run or restore)."""
    root = f"--root={settings.state_dir / 'runsc'}"
    flags = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # it ended while we looked
        if root in argv and sandbox_id in argv and ({"run", "restore"} & set(argv)):
            flags.update(arg for arg in argv if arg.startswith("--platform="))
    assert len(flags) == 1, flags
    return flags.pop().removeprefix("--platform=")


async def test_a_session_waits_on_the_session_platform_and_a_script_runs_on_the_other(
    sandboxes: Sandboxes, settings: Settings, limits: Limits
) -> None:
    session = await create_session(sandboxes, Language.PYTHON, limits)
    script = await run_detached(sandboxes, Language.BASH, b"sleep 60\n", limits)
    try:
        platforms = (platform_of(settings, session.sandbox_id),
                     platform_of(settings, script.sandbox_id))
    finally:
        for sandbox in (session, script):
            await delete_sandbox(sandboxes, sandbox.sandbox_id)

    assert platforms == (settings.session_platform, settings.runsc_platform)
    assert settings.session_platform != settings.runsc_platform


async def test_a_suspended_session_is_restored_on_the_platform_it_was_made_on(
    sandboxes: Sandboxes, settings: Settings, limits: Limits
) -> None:
    session = await create_session(sandboxes, Language.PYTHON, limits)
    sandbox_id = session.sandbox_id
    try:
        await exec_in_sandbox(sandboxes, sandbox_id, Program.script(
            Language.PYTHON, b"open('/workspace/kept', 'w').write('here')\n"), b"", 20)
        suspended = await suspend_sandbox(sandboxes, sandbox_id)
        assert suspended.checkpoint is not None
        # The platform file is published with the image, in its manifest, and fetched back.
        manifest = await sandboxes.images.manifest(suspended.checkpoint)
        fetched = await sandboxes.images.fetch(suspended.checkpoint)
        try:
            recorded = (Path(fetched.folder) / PLATFORM_FILE).read_text()
        finally:
            await sandboxes.images.release(fetched)
        await restore_sandbox(sandboxes, sandbox_id)
        restored_on = platform_of(settings, sandbox_id)
        read = await exec_in_sandbox(sandboxes, sandbox_id, Program.script(
            Language.PYTHON, b"print(open('/workspace/kept').read())\n"), b"", 20)
    finally:
        await delete_sandbox(sandboxes, sandbox_id)

    assert manifest is not None and PLATFORM_FILE in {file.name for file in manifest.files}
    assert recorded == restored_on == settings.session_platform
    assert read.stdout.text == "here\n"
