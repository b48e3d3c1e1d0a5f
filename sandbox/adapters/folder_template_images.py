"""`FolderTemplateImages`: template images as folders under one folder on this host
(SANDBOX_TEMPLATE_DIR), readable by the server's user alone (an image holds a sandbox's
memory). Publishing seals the image's files; a record written afterwards is what says an
image is complete, so a folder without one is collected at the next start.

A store shared by several instances (a bucket, with manifests) can take this port's place:
`prepare` and `local` still give folders on this host, `publish` uploads and `local`
fetches and verifies."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from sandbox.adapters.private import FILE_MODE, private_folder, private_tree_files
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.ids import ID_PATTERN
from sandbox.domain.ports import TemplateImages


class FolderTemplateImages(TemplateImages):
    def __init__(self, root: Path) -> None:
        self.root = root

    async def start(self) -> None:
        """The folder and what is in it are the server's user's alone, at every start."""
        await asyncio.to_thread(self._make_private)

    def _make_private(self) -> None:
        private_folder(self.root)
        private_tree_files(self.root)

    async def prepare(self, key: str) -> str:
        path = self._path(key)

        def fresh() -> None:
            shutil.rmtree(path, ignore_errors=True)
            private_folder(path)

        await asyncio.to_thread(fresh)
        return str(path)

    async def publish(self, key: str) -> None:
        path = self._path(key)

        def seal() -> None:
            if not path.is_dir():
                raise RuntimeFailure(f"no image was prepared at {path}")
            for entry in path.iterdir():
                entry.chmod(FILE_MODE)

        await asyncio.to_thread(seal)

    async def local(self, key: str) -> str:
        path = self._path(key)
        if not path.is_dir():
            raise RuntimeFailure(f"the image of {key} is missing from {self.root}")
        return str(path)

    async def remove(self, key: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._path(key), True)

    async def keys(self) -> set[str]:
        def listed() -> set[str]:
            if not self.root.is_dir():
                return set()
            return {entry.name for entry in self.root.iterdir() if ID_PATTERN.match(entry.name)}

        return await asyncio.to_thread(listed)

    def _path(self, key: str) -> Path:
        # Only a well-formed key becomes a path.
        if not ID_PATTERN.match(key):
            raise ValueError(f"not an image key: {key!r}")
        return self.root / key
