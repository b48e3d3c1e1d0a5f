"""`FileOutputLog`: detached output kept in files under the state folder, so it survives a
restart and a restore appends to the same record. Capped per stream; a marker file says
when the cap was hit."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from sandbox.domain.ids import checked_sandbox_id
from sandbox.domain.model import Stream
from sandbox.domain.ports import OUTPUT_READ_LIMIT, OutputLog, OutputSink, StoredOutput


class _FileSink(OutputSink):
    def __init__(self, folder: Path, limit: int) -> None:
        self._folder = folder
        self._limit = limit

    async def write(self, stream: Stream, data: bytes) -> None:
        path = self._folder / stream.value
        size = path.stat().st_size if path.exists() else 0
        room = self._limit - size
        if len(data) > room:
            (self._folder / f"{stream.value}.truncated").touch()
        if room > 0:
            with path.open("ab") as out:
                out.write(data[:room])


class FileOutputLog(OutputLog):
    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

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
