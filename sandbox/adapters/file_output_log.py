"""`FileOutputLog`: detached output kept in files under the state folder, so it survives a
restart and a restore appends to the same record. Capped per stream; a marker file says
when the cap was hit."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from sandbox.adapters.private import private_folder
from sandbox.domain.ids import checked_sandbox_id
from sandbox.domain.model import Stream
from sandbox.domain.ports import OUTPUT_READ_LIMIT, OutputLog, OutputSink, StoredOutput


class _FileSink(OutputSink):
    """Appends each stream to its file. The disk is touched in a worker thread (a slow or
    full disk must not stall the event loop); sizes are kept here, so that once a stream is
    full, its output is dropped without touching the disk at all."""

    def __init__(self, folder: Path, limit: int) -> None:
        self._folder = folder
        self._limit = limit
        # Unknown until the first write: a restored sandbox appends to what is there.
        self._sizes: dict[Stream, int] = {}
        self._marked: set[Stream] = set()

    async def write(self, stream: Stream, data: bytes) -> None:
        size = self._sizes.get(stream)
        if size is None:
            size = await asyncio.to_thread(_size_of, self._folder / stream.value)
        room = max(self._limit - size, 0)
        kept = data[:room]
        self._sizes[stream] = size + len(kept)
        overflow = len(data) > room and stream not in self._marked
        if overflow:
            self._marked.add(stream)
        if kept or overflow:
            await asyncio.to_thread(self._append, stream, kept, overflow)

    def _append(self, stream: Stream, data: bytes, overflow: bool) -> None:
        if data:
            with _private_open(self._folder / stream.value) as out:
                out.write(data)
        if overflow:
            _private_open(self._folder / f"{stream.value}.truncated").close()


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _private_open(path: Path) -> BinaryIO:
    """Open for appending, made readable by the server's user only: output may hold
    secrets."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o600), "ab")


class FileOutputLog(OutputLog):
    def __init__(self, root: Path) -> None:
        self._root = private_folder(root)

    def _folder(self, sandbox_id: str) -> Path:
        return self._root / checked_sandbox_id(sandbox_id)

    def sink(self, sandbox_id: str, limit_bytes: int) -> OutputSink:
        folder = self._folder(sandbox_id)
        folder.mkdir(mode=0o700, exist_ok=True)
        return _FileSink(folder, limit_bytes)

    async def read(self, sandbox_id: str, stream: Stream, offset: int = 0) -> StoredOutput:
        folder = self._folder(sandbox_id)

        def work() -> StoredOutput:
            path = folder / stream.value
            try:
                with path.open("rb") as source:
                    size = path.stat().st_size
                    source.seek(offset)
                    data = source.read(OUTPUT_READ_LIMIT)
            except FileNotFoundError:
                data, size = b"", 0
            truncated = (folder / f"{stream.value}.truncated").exists()
            return StoredOutput(data=data, truncated=truncated, size=size)

        return await asyncio.to_thread(work)

    async def remove(self, sandbox_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._folder(sandbox_id), True)

    async def ids(self) -> set[str]:
        return {entry.name for entry in self._root.iterdir()}
