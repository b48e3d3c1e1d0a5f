"""The file helpers' protocols, spoken with real processes on this host: the helpers' own code
run by the host's python3 in a temporary folder (what runsc would run inside a sandbox), and
forgers that answer what a tampered helper could. Nothing a forger prints is believed."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from sandbox.adapters.runsc import files
from sandbox.adapters.runsc.file_transfers import FileHelper, listing, open_download, upload
from sandbox.adapters.runsc.process import spawn
from sandbox.domain.errors import FileNotFoundInSandbox, InvalidRequest, PayloadTooLarge
from sandbox.domain.ports import FILE_CHUNK_BYTES

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def never_gone() -> bool:
    return False


@asynccontextmanager
async def helper(argv: list[str], takes_input: bool = False) -> AsyncIterator[FileHelper]:
    # The host's interpreter stands in for the sandbox's /usr/bin/python3.
    argv = [sys.executable if argv[0] == files.PYTHON else argv[0], *argv[1:]]
    stdin = asyncio.subprocess.PIPE if takes_input else asyncio.subprocess.DEVNULL
    process, stdout, stderr = await spawn(argv, stdin=stdin)
    running = FileHelper(process, stdout, stderr, 30.0, never_gone)
    try:
        yield running
    finally:
        running.close_input()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await running.close()


def forger(stdout: bytes, exit_code: int = 0) -> list[str]:
    """A helper that prints what it likes and exits as it likes."""
    code = (f"import sys; sys.stdout.buffer.write({stdout!r}); sys.stdout.flush(); "
            f"sys.exit({exit_code})")
    return [sys.executable, "-c", code]


def forger_of_file(folder: Path, stdout: bytes) -> list[str]:
    """A forger whose answer is too long for a command line."""
    answer = folder / "answer"
    answer.write_bytes(stdout)
    code = (f"import sys; sys.stdout.buffer.write(open({str(answer)!r}, 'rb').read()); "
            "sys.stdout.flush()")
    return [sys.executable, "-c", code]


async def pieces(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def failing(data: bytes) -> AsyncIterator[bytes]:
    async for chunk in pieces(data):
        yield chunk
    raise PayloadTooLarge("the client sent too much")


# The helpers' own code ----------------------------------------------------------------------


async def test_an_upload_is_put_in_place_whole_and_parents_are_made(tmp_path: Path) -> None:
    target = tmp_path / "made" / "file.bin"
    data = bytes(range(256)) * 1000  # frames of 64 KiB and a short last one

    async with helper(files.write_argv(str(target)), takes_input=True) as running:
        size = await upload(running, str(target), pieces(data, 100_000))

    assert size == len(data)
    assert target.read_bytes() == data
    assert [entry.name for entry in target.parent.iterdir()] == ["file.bin"]


async def test_a_cut_upload_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "kept.txt"
    target.write_bytes(b"old")

    async with helper(files.write_argv(str(target)), takes_input=True) as running:
        with pytest.raises(PayloadTooLarge, match="sent too much"):
            await upload(running, str(target), failing(b"n" * 5000))

    assert target.read_bytes() == b"old"
    assert [entry.name for entry in tmp_path.iterdir()] == ["kept.txt"]


async def test_an_upload_onto_a_folder_is_refused_before_any_of_it_is_read(
    tmp_path: Path,
) -> None:
    async def untouched() -> AsyncIterator[bytes]:
        raise AssertionError("the body was read")
        yield b""  # pragma: no cover

    async with helper(files.write_argv(str(tmp_path)), takes_input=True) as running:
        with pytest.raises(InvalidRequest, match="is a directory"):
            await upload(running, str(tmp_path), untouched())


async def test_a_download_gives_its_size_then_exactly_its_bytes(tmp_path: Path) -> None:
    data = b"d" * (3 * FILE_CHUNK_BYTES + 7)
    (tmp_path / "f").write_bytes(data)

    async with helper(files.read_argv(str(tmp_path / "f"), len(data))) as running:
        opened = await open_download(running, str(tmp_path / "f"), len(data))
        received = [chunk async for chunk in opened.chunks]

    assert opened.size == len(data)
    assert b"".join(received) == data
    assert max(len(chunk) for chunk in received) <= FILE_CHUNK_BYTES


@pytest.mark.parametrize(("name", "error"), [("missing", FileNotFoundInSandbox),
                                             ("big", PayloadTooLarge),
                                             (".", InvalidRequest)])
async def test_a_download_that_cannot_be_done_fails_before_any_byte(
    tmp_path: Path, name: str, error: type[Exception]
) -> None:
    (tmp_path / "big").write_bytes(b"x" * 11)
    path = str(tmp_path / name)

    async with helper(files.read_argv(path, 10)) as running:
        with pytest.raises(error):
            await open_download(running, path, 10)


async def test_a_listing_names_kinds_sizes_and_odd_names(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"aaa")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to("a.txt")
    (tmp_path / b"caf\xe9".decode(errors="surrogateescape")).write_bytes(b"")

    async with helper(files.list_argv(str(tmp_path))) as running:
        entries = await listing(running, str(tmp_path))

    assert [(entry.name, entry.kind, entry.size) for entry in entries] == [
        ("a.txt", "file", 3), ("caf\ufffd", "file", 0), ("link", "link", 5),
        ("sub", "directory", (tmp_path / "sub").stat().st_size)]


# What a tampered helper could answer --------------------------------------------------------

FORGED_LISTINGS = {
    "no JSON": b"[[",
    "no list": b'{"a": 1}',
    "a nested bomb": b"[" * 100_000 + b"]" * 100_000,
    "too many entries": json.dumps([[f"f{i}", "file", 0, 0.0]
                                    for i in range(files.MAX_LIST_ENTRIES + 1)]).encode(),
    "a short entry": b'[["a", "file", 1]]',
    "a path as name": b'[["../etc", "file", 1, 0.0]]',
    "a slash in a name": b'[["a/b", "file", 1, 0.0]]',
    "a dot name": b'[[".", "directory", 1, 0.0]]',
    "an empty name": b'[["", "file", 1, 0.0]]',
    "a long name": json.dumps([["n" * 256, "file", 1, 0.0]]).encode(),
    "a lone surrogate": b'[["\\udce9", "file", 1, 0.0]]',
    "an unknown kind": b'[["a", "socket", 1, 0.0]]',
    "a negative size": b'[["a", "file", -1, 0.0]]',
    "a true size": b'[["a", "file", true, 0.0]]',
    "a fraction of a size": b'[["a", "file", 1.5, 0.0]]',
    "a time that is no number": b'[["a", "file", 1, "noon"]]',
    "an infinite time": b'[["a", "file", 1, Infinity]]',
    "no time at all": b'[["a", "file", 1, NaN]]',
}


@pytest.mark.parametrize("forged", FORGED_LISTINGS.values(), ids=FORGED_LISTINGS.keys())
async def test_a_forged_listing_is_refused_whole(tmp_path: Path, forged: bytes) -> None:
    async with helper(forger_of_file(tmp_path, forged)) as running:
        with pytest.raises(InvalidRequest, match="from its helper in the sandbox"):
            await listing(running, "/workspace")


async def test_a_listing_larger_than_its_cap_is_refused_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(files, "MAX_LIST_BYTES", 1000)

    async with helper(forger(b"[" + b" " * 5000 + b"]")) as running:
        with pytest.raises(InvalidRequest, match="too large"):
            await listing(running, "/workspace")


async def test_a_time_beyond_what_a_date_can_show_is_shown_at_its_edge() -> None:
    async with helper(forger(b'[["a", "file", 1, 1e300], ["b", "file", 1, -1e300]]')) as running:
        entries = await listing(running, "/workspace")

    assert [entry.modified_at for entry in entries] == [files.LATEST_TIME, files.EARLIEST_TIME]


@pytest.mark.parametrize("forged", [b"abc\n", b"12", b"-1\n", b"1e3\n", b" 5\n",
                                    b"1" * 20 + b"\n", b"7" * 100_000])
async def test_a_forged_size_line_is_refused(tmp_path: Path, forged: bytes) -> None:
    async with helper(forger_of_file(tmp_path, forged)) as running:
        with pytest.raises(InvalidRequest):
            await open_download(running, "/workspace/f", 1 << 30)


async def test_a_size_over_the_limit_is_refused_whatever_the_helper_checked() -> None:
    async with helper(forger(b"11\n" + b"x" * 11)) as running:
        with pytest.raises(PayloadTooLarge):
            await open_download(running, "/workspace/f", 10)


async def test_fewer_bytes_than_announced_fail_the_download() -> None:
    async with helper(forger(b"10\nabcde")) as running:
        opened = await open_download(running, "/workspace/f", 100)

        with pytest.raises(InvalidRequest, match="5 of the 10 bytes"):
            [chunk async for chunk in opened.chunks]


async def test_bytes_beyond_those_announced_are_not_sent() -> None:
    async with helper(forger(b"3\nabcdefgh")) as running:
        opened = await open_download(running, "/workspace/f", 100)
        received = b"".join([chunk async for chunk in opened.chunks])

    assert received == b"abc"


@pytest.mark.parametrize(("said", "exit_code", "error"), [
    (b"", 0, InvalidRequest), (b"nope\n", 0, InvalidRequest),
    (b"", files.NOT_FOUND, FileNotFoundInSandbox), (b"", 99, InvalidRequest),
])
async def test_a_write_helper_that_is_not_ready_refuses_the_upload_unread(
    said: bytes, exit_code: int, error: type[Exception]
) -> None:
    async def untouched() -> AsyncIterator[bytes]:
        raise AssertionError("the body was read")
        yield b""  # pragma: no cover

    async with helper(forger(said, exit_code), takes_input=True) as running:
        with pytest.raises(error):
            await upload(running, "/workspace/f", untouched())


async def test_a_write_helper_that_claims_success_without_taking_the_file_fails_it() -> None:
    async with helper(forger(files.READY, 0), takes_input=True) as running:
        with pytest.raises(InvalidRequest):
            await upload(running, "/workspace/f", pieces(b"x" * (4 * FILE_CHUNK_BYTES)))
