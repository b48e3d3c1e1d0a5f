"""Templates and fork on real gVisor: a snapshot (`runsc checkpoint --leave-running`) keeps a
session's memory, files and processes while it runs on; copies restored under new ids go on
from that state, each a new generation (its own SANDBOX_GENERATION, its generators re-seeded);
a fork makes N copies of the present state."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from integration.support import read_bytes, write_bytes
from sandbox.adapters.folder_template_images import FolderTemplateImages
from sandbox.adapters.memory_templates import InMemoryTemplateStore
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.errors import FileNotFoundInSandbox
from sandbox.domain.lifecycle import copies, templates
from sandbox.domain.lifecycle.creation import create_session
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.execution import execute_from_template
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.work import exec_in_sandbox
from sandbox.domain.model import Language, Program
from sandbox.domain.templates import Templates
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]

LIMITS = dataclasses.replace(Settings().default_limits(), timeout_s=60)
# Counts into a file: a process of the template that must go on in each copy.
FILE_COUNTER = b"""\
import time
n = 0
while True:
    with open("/tmp/count.txt", "a") as out:
        out.write(f"{n}\\n")
    n += 1
    time.sleep(0.1)
"""
# What a copy draws and is told: Python's `random` (seeded at the zygote's start, before
# the snapshot), the generation in the environment and in the file.
DRAWS = b"""\
import os, random
print(random.random())
print(os.environ.get("SANDBOX_GENERATION", "none"))
print(open("/run/sandbox/generation").read().strip()
      if os.path.exists("/run/sandbox/generation") else "none")
"""


@pytest.fixture
async def kept(settings: Settings) -> AsyncIterator[Templates]:
    images = FolderTemplateImages(settings.state_dir / "templates")
    await images.start()
    yield Templates(InMemoryTemplateStore(), images)
    assert await images.keys() == set()  # every test deletes the templates it made


@pytest.fixture
def with_templates(sandboxes: Sandboxes, kept: Templates) -> Sandboxes:
    sandboxes.kept_templates = kept
    return sandboxes


async def python(sandboxes: Sandboxes, sandbox_id: str, source: bytes) -> list[str]:
    result = await exec_in_sandbox(sandboxes, sandbox_id,
                                   Program.script(Language.PYTHON, source), b"", 30.0)
    assert result.outcome.exit_code == 0, result.to_dict()
    return str(result.to_dict()["stdout"]).splitlines()


async def lines(sandboxes: Sandboxes, sandbox_id: str) -> list[str]:
    try:
        return (await read_bytes(sandboxes, sandbox_id, "/tmp/count.txt")).decode().splitlines()
    except FileNotFoundInSandbox:
        return []


async def counted_past(sandboxes: Sandboxes, sandbox_id: str, count: int) -> list[str]:
    """The counter's lines once it has written more than `count` (bounded: no timing claim)."""
    async with asyncio.timeout(30):
        while True:
            found = await lines(sandboxes, sandbox_id)
            if len(found) > count:
                return found
            await asyncio.sleep(0.1)


async def a_counting_session(sandboxes: Sandboxes) -> str:
    session = await create_session(sandboxes, Language.PYTHON, LIMITS)
    await write_bytes(sandboxes, session.sandbox_id, "/workspace/count.py", FILE_COUNTER)
    await write_bytes(sandboxes, session.sandbox_id, "/workspace/kept.txt", b"state")
    await python(sandboxes, session.sandbox_id,
                 b"import subprocess\nsubprocess.Popen(['python3', '/workspace/count.py'], "
                 b"start_new_session=True)\n")
    await counted_past(sandboxes, session.sandbox_id, 3)
    return session.sandbox_id


async def test_copies_of_a_template_go_on_with_its_files_and_processes_each_a_new_generation(
    with_templates: Sandboxes, runtime: RunscSandboxRuntime
) -> None:
    sandboxes = with_templates
    source_id = await a_counting_session(sandboxes)
    source_draws = await python(sandboxes, source_id, DRAWS)

    template = await templates.snapshot_sandbox(sandboxes, source_id)
    at_snapshot = len(await lines(sandboxes, source_id))
    made = [await copies.create_from_template(sandboxes, template.template_id)
            for _ in range(2)]
    counts = [await counted_past(sandboxes, copy.sandbox_id, at_snapshot + 5) for copy in made]
    files = [await read_bytes(sandboxes, copy.sandbox_id, "/workspace/kept.txt")
             for copy in made]
    draws = [await python(sandboxes, copy.sandbox_id, DRAWS) for copy in made]
    source_after = await counted_past(sandboxes, source_id, at_snapshot + 5)
    for sandbox_id in [source_id, *(copy.sandbox_id for copy in made)]:
        await delete_sandbox(sandboxes, sandbox_id)
    await templates.delete_template(sandboxes, template.template_id)

    assert files == [b"state", b"state"]
    for count in [*counts, source_after]:
        assert count == [str(n) for n in range(len(count))]  # went on, from where it was
    randoms = {draw[0] for draw in [source_draws, *draws]}
    generations = {draw[1] for draw in [source_draws, *draws]}
    assert len(randoms) == 3 and len(generations) == 3
    assert source_draws[1:] == ["none", "none"]  # never restored: no generation
    assert all(draw[1] == draw[2] and len(draw[1]) == 32 for draw in draws)


async def test_a_fork_makes_copies_of_the_present_state(with_templates: Sandboxes) -> None:
    sandboxes = with_templates
    source_id = await a_counting_session(sandboxes)

    forks = await copies.fork_sandbox(sandboxes, source_id, 2)
    counts = [await counted_past(sandboxes, fork.sandbox_id, 10) for fork in forks]
    for sandbox_id in [source_id, *(fork.sandbox_id for fork in forks)]:
        await delete_sandbox(sandboxes, sandbox_id)

    for count in counts:
        assert count == [str(n) for n in range(len(count))]


async def test_a_script_runs_in_a_copy_of_a_template_and_the_copy_is_gone_afterwards(
    with_templates: Sandboxes, runtime: RunscSandboxRuntime
) -> None:
    sandboxes = with_templates
    source_id = await a_counting_session(sandboxes)
    await python(sandboxes, source_id, b"import json\nopen('/tmp/x', 'w').write('42')\n")
    template = await templates.snapshot_sandbox(sandboxes, source_id)

    result = await execute_from_template(sandboxes, template.template_id, None,
                                         b"print(open('/tmp/x').read())\n")
    running = await runtime.running_ids()
    await delete_sandbox(sandboxes, source_id)
    await templates.delete_template(sandboxes, template.template_id)

    assert (result.outcome.exit_code, result.to_dict()["stdout"]) == (0, "42\n")
    assert running == {source_id}


async def test_a_template_image_is_readable_by_root_only(
    with_templates: Sandboxes, settings: Settings
) -> None:
    sandboxes = with_templates
    session = await create_session(sandboxes, Language.PYTHON, LIMITS)
    template = await templates.snapshot_sandbox(sandboxes, session.sandbox_id)
    image = settings.state_dir / "templates" / template.template_id

    modes = {path.name: path.stat().st_mode & 0o777 for path in [image, *image.iterdir()]}
    platform = (image / "platform").read_text()
    await delete_sandbox(sandboxes, session.sandbox_id)
    await templates.delete_template(sandboxes, template.template_id)

    assert modes.pop(template.template_id) == 0o700
    assert set(modes.values()) == {0o600}
    assert platform == settings.session_platform
    assert not Path(image).exists()
