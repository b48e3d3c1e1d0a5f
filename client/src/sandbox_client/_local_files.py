"""Local files moved in and out a chunk at a time, never held whole."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 64 * 1024


def remote_name(local: Path) -> str:
    """Where an upload goes when not told: the file's name, in /workspace."""
    if not local.name:
        raise ValueError(f"{local} names no file")
    return local.name


def local_chunks(local: Path) -> Iterator[bytes]:
    with local.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            yield chunk


async def local_chunks_async(local: Path) -> AsyncIterator[bytes]:
    # Each read in a worker thread: a slow disk does not hold up the event loop.
    source = await asyncio.to_thread(local.open, "rb")
    try:
        while chunk := await asyncio.to_thread(source.read, CHUNK_BYTES):
            yield chunk
    finally:
        source.close()


@contextlib.contextmanager
def saved_atomically(target: Path) -> Iterator[BinaryIO]:
    """A file to write that takes the target's place only once whole: a download that
    fails half-way leaves the old file, or none."""
    folder = target.parent if str(target.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
