"""File calls on real gVisor against what code in the sandbox can plant: modules named like
the standard library's in /workspace, a `sitecustomize`, a hostile PYTHONPATH in the
session's environment. The helpers that list, read and write files run isolated from all of
it, and what they print is checked before it is believed."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from integration.support import chunks, whole
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.errors import InvalidRequest
from sandbox.domain.lifecycle.creation import create_session
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.work import exec_in_sandbox, list_files, read_file, write_file
from sandbox.domain.model import Language, Program
from sandbox.domain.ports import FILE_CHUNK_BYTES
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]

LIMITS = dataclasses.replace(Settings().default_limits(), timeout_s=120)
EXEC_TIMEOUT_S = 30.0
# Whoever imports it prints a forged listing (and a forged download) and ends at once.
FORGER = b"""\
import sys
sys.stdout.write('[["forged", "file", 1, 0.0]]')
sys.stdout.write('3\\nabc')
sys.stdout.flush()
import os
os._exit(0)
"""
# A host that held the whole file would need 1024 chunks.
PEAK_CHUNKS = 16
COUNT_HELPERS = b"""\
for cmdline in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < "$cmdline" 2>/dev/null; echo; done \\
    | grep -c -e '^/usr/bin/python3 -I -S' || true
"""
PLANTED = ("json.py", "os.py", "sitecustomize.py", "usercustomize.py", "struct.py",
           "stat.py", "re.py", "encodings.py")
PLANT = f"""\
import os
os.makedirs("/workspace/planted", exist_ok=True)
for folder in ("/workspace", "/workspace/planted"):
    for name in {PLANTED!r}:
        with open(os.path.join(folder, name), "wb") as out:
            out.write({FORGER!r})
"""


@pytest.fixture
async def planted(sandboxes: Sandboxes) -> AsyncIterator[str]:
    """A session whose /workspace and PYTHONPATH are full of forgers, and whose environment
    would break any Python started with it."""
    session = await create_session(sandboxes,
        Language.PYTHON, LIMITS,
        env=(("PYTHONPATH", "/workspace/planted:/workspace"), ("PYTHONHOME", "/workspace"),
             ("PYTHONSTARTUP", "/workspace/json.py"), ("LD_PRELOAD", "/workspace/no.so")),
    )
    try:
        planting = await exec_in_sandbox(
            sandboxes, session.sandbox_id, Program.script(Language.BASH, (
            f"env -u PYTHONPATH -u PYTHONHOME -u LD_PRELOAD python3 - <<'EOF'\n{PLANT}EOF\n"
        ).encode()), b"", EXEC_TIMEOUT_S)
        assert planting.outcome.exit_code == 0, planting
        yield session.sandbox_id
    finally:
        await delete_sandbox(sandboxes, session.sandbox_id)


@pytest.fixture
async def session(sandboxes: Sandboxes) -> AsyncIterator[str]:
    created = await create_session(sandboxes, Language.PYTHON, LIMITS)
    try:
        yield created.sandbox_id
    finally:
        await delete_sandbox(sandboxes, created.sandbox_id)


async def test_listing_ignores_modules_and_a_pythonpath_planted_by_the_sandbox(
    sandboxes: Sandboxes, planted: str
) -> None:
    listed = await list_files(sandboxes, planted, "/workspace")

    assert [(entry.name, entry.kind) for entry in listed] == sorted(
        [(name, "file") for name in PLANTED] + [("planted", "directory")])
    assert {entry.size for entry in listed if entry.kind == "file"} == {len(FORGER)}


async def test_download_and_upload_ignore_modules_and_a_pythonpath_planted_by_the_sandbox(
    sandboxes: Sandboxes, planted: str
) -> None:
    data = bytes(range(256)) * 1000

    downloaded = await whole(read_file(sandboxes, planted, "/workspace/json.py"))
    await write_file(sandboxes, planted, "/workspace/planted/upload.bin", chunks(data))
    uploaded = await whole(read_file(sandboxes, planted, "/workspace/planted/upload.bin"))

    assert downloaded == FORGER
    assert uploaded == data


async def test_execs_still_get_the_sessions_environment(
    sandboxes: Sandboxes, planted: str
) -> None:
    result = await exec_in_sandbox(sandboxes, planted,
                                   Program(language=None, argv=("printenv", "PYTHONPATH")),
                                b"", EXEC_TIMEOUT_S)

    assert result.stdout.text == "/workspace/planted:/workspace\n"


async def test_a_name_that_is_not_utf8_is_listed_with_a_replacement_character(
    sandboxes: Sandboxes, session: str
) -> None:
    await exec_in_sandbox(sandboxes, session, Program.script(
        Language.BASH, b"mkdir -p /workspace/odd && touch $'/workspace/odd/caf\\xe9'\n"),
        b"", EXEC_TIMEOUT_S)

    listed = await list_files(sandboxes, session, "/workspace/odd")

    assert [entry.name for entry in listed] == ["caf\ufffd"]


async def test_a_fifo_is_refused_rather_than_waited_on(
    sandboxes: Sandboxes, session: str
) -> None:
    await exec_in_sandbox(sandboxes, session,
                          Program(language=None, argv=("mkfifo", "/workspace/pipe")),
                       b"", EXEC_TIMEOUT_S)

    with pytest.raises(InvalidRequest, match="not a regular file"):
        await whole(read_file(sandboxes, session, "/workspace/pipe"))


async def test_an_abandoned_download_leaves_no_helper_running(
    sandboxes: Sandboxes, session: str
) -> None:
    await write_file(sandboxes, session, "/workspace/big.bin",
                     chunks(b"b" * (32 * FILE_CHUNK_BYTES)))

    async with read_file(sandboxes, session, "/workspace/big.bin") as opened:
        await anext(opened.chunks)
    helpers = await exec_in_sandbox(sandboxes, session,
                                    Program.script(Language.BASH, COUNT_HELPERS), b"",
                                 EXEC_TIMEOUT_S)

    assert helpers.stdout.text == "0\n"


async def test_a_file_far_larger_than_a_chunk_moves_through_a_few_chunks_of_memory(
    runtime: RunscSandboxRuntime, sandboxes: Sandboxes, session: str
) -> None:
    size = 1024 * FILE_CHUNK_BYTES  # 64 MiB, the largest file the server takes by default
    sent, received = hashlib.sha256(), hashlib.sha256()

    async def generated() -> AsyncIterator[bytes]:
        random_bytes = random.Random(11)
        for _ in range(size // FILE_CHUNK_BYTES):
            chunk = random_bytes.randbytes(FILE_CHUNK_BYTES)
            sent.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        written = await runtime.write_file(session, "/workspace/big.bin", generated())
        async with runtime.read_file(session, "/workspace/big.bin", size) as opened:
            async for chunk in opened.chunks:
                received.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert written == opened.size == size
    assert received.hexdigest() == sent.hexdigest()
    # All that Python allocated at its busiest, transfers and runsc's pipes included.
    assert peak < PEAK_CHUNKS * FILE_CHUNK_BYTES, f"peak {peak} bytes"
