"""`FolderImageStore`: the ImageStore port on a folder every instance mounts (a Cloud Storage
bucket through its FUSE volume, NFS, or the state folder of a single instance).

Layout under the shared root, one folder per image:

    <key>/<file>...          the image's files, as runsc wrote them
    <key>/manifest.json      written last (a temporary name, then a rename)

Fetched copies go to a local staging folder (`staging`), private to this instance, emptied
at start. Where the staging folder and the store share a filesystem (one instance), files are
moved in and hard-linked out instead of copied: a publish then costs a read of each file (its
hash), and a fetch the same. Every piece of disk work runs in a worker thread.

gcsfuse uploads a file when it is closed, and a reader sees an object whole or not at all;
the manifest is the last object written, so its presence means every file before it is
there. A missing or unparsable manifest makes the image unusable, never half-restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import structlog

from sandbox.adapters.private import FILE_MODE, FOLDER_MODE, private_folder
from sandbox.domain.image_store import (
    FetchedImage,
    ImageExists,
    ImageFile,
    ImageManifest,
    ImageStore,
    ImageUnusable,
    checked_image_key,
)

log = structlog.get_logger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
CHUNK_BYTES = 1024 * 1024


class FolderImageStore(ImageStore):
    """`link`: move files in and hard-link them out where the filesystems allow (False forces
    copies, as between a local disk and a bucket)."""

    def __init__(
        self, root: Path, staging: Path, *, link: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.staging = staging
        self._link = link
        self._clock = clock

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        private_folder(self.root)
        private_folder(self.staging)
        for leftover in self.staging.iterdir():  # copies a crash left behind
            _remove_tree(leftover)

    async def publish(self, key: str, folder: str, identity: Mapping[str, str]) -> ImageManifest:
        return await asyncio.to_thread(self._publish, checked_image_key(key), Path(folder),
                                       dict(identity))

    def _publish(self, key: str, source: Path, identity: dict[str, str]) -> ImageManifest:
        target = self.root / key
        if (target / MANIFEST).exists():
            raise ImageExists(f"image {key} is published already")
        _remove_tree(target)  # a half-published leftover
        target.mkdir(mode=FOLDER_MODE, parents=True)
        try:
            files = tuple(self._take(entry, target / entry.name)
                          for entry in sorted(source.iterdir(), key=lambda entry: entry.name))
            manifest = ImageManifest(key=key, files=files,
                                     identity=tuple(sorted(identity.items())),
                                     created_at=self._clock())
            _write_manifest(target, manifest)
        except BaseException:
            _remove_tree(target)
            raise
        log.info("images.published", key=key, files=len(files), bytes=manifest.size)
        return manifest

    def _take(self, source: Path, target: Path) -> ImageFile:
        if source.is_symlink() or not source.is_file():
            raise ValueError(f"an image holds regular files only, not {source.name!r}")
        if self._link and _same_device(source, target.parent):
            size, digest = _hash(source)
            os.rename(source, target)
            os.chmod(target, FILE_MODE)  # runsc writes images readable by everyone
        else:
            size, digest = _copy(source, target)
        _fsync(target)
        return ImageFile(name=source.name, size=size, sha256=digest)

    async def fetch(self, key: str) -> FetchedImage:
        return await asyncio.to_thread(self._fetch, checked_image_key(key))

    def _fetch(self, key: str) -> FetchedImage:
        manifest = self._read_manifest(key)
        if manifest is None:
            raise ImageUnusable(f"image {key} has no complete manifest")
        local = self.staging / f"{key}.{secrets.token_hex(4)}"
        local.mkdir(mode=FOLDER_MODE)
        try:
            for file in manifest.files:
                _fetch_file(self.root / key / file.name, local / file.name, file, self._link)
        except BaseException:
            _remove_tree(local)
            raise
        return FetchedImage(folder=str(local), manifest=manifest)

    async def release(self, fetched: FetchedImage) -> None:
        local = Path(fetched.folder)
        if local.parent != self.staging:
            raise ValueError(f"{local} is not a fetched copy of this store")
        await asyncio.to_thread(_remove_tree, local)

    async def manifest(self, key: str) -> ImageManifest | None:
        return await asyncio.to_thread(self._read_manifest, checked_image_key(key))

    def _read_manifest(self, key: str) -> ImageManifest | None:
        try:
            return _parse_manifest(key, (self.root / key / MANIFEST).read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def published(self, prefix: str = "") -> list[ImageManifest]:
        def listed() -> list[ImageManifest]:
            found = [manifest for key in self._keys(prefix)
                     if (manifest := self._read_manifest(key)) is not None]
            return sorted(found, key=lambda manifest: manifest.created_at)

        return await asyncio.to_thread(listed)

    def _keys(self, prefix: str) -> list[str]:
        keys = []
        for entry in self.root.iterdir():
            with contextlib.suppress(ValueError):
                if entry.name.startswith(prefix) and entry.is_dir():
                    keys.append(checked_image_key(entry.name))
        return keys

    async def remove(self, key: str) -> None:
        await asyncio.to_thread(self._remove, checked_image_key(key))

    def _remove(self, key: str) -> None:
        target = self.root / key
        (target / MANIFEST).unlink(missing_ok=True)
        _remove_tree(target)

    async def collect(
        self, prefix: str, keep: Collection[str], older_than_s: float
    ) -> list[str]:
        def collected() -> list[str]:
            now = self._clock()
            removed = []
            for key in self._keys(prefix):
                if key in keep or now - _last_write(self.root / key) <= older_than_s:
                    continue
                self._remove(key)
                removed.append(key)
            return removed

        removed = await asyncio.to_thread(collected)
        if removed:
            log.info("images.collected", keys=removed)
        return removed


def _parse_manifest(key: str, text: str) -> ImageManifest:
    data: dict[str, Any] = json.loads(text)
    if data["format"] != FORMAT or data["key"] != key:
        raise ValueError("not a manifest of this image")
    files = tuple(ImageFile(name=str(item["name"]), size=int(item["size"]),
                            sha256=str(item["sha256"])) for item in data["files"])
    if any(file.name in (MANIFEST, "", ".", "..") or "/" in file.name for file in files):
        raise ValueError("a manifest names a file outside its image")
    identity = tuple((str(name), str(value)) for name, value in data["identity"])
    return ImageManifest(key=key, files=files, identity=identity,
                         created_at=float(data["created_at"]))


def _write_manifest(target: Path, manifest: ImageManifest) -> None:
    text = json.dumps({
        "format": FORMAT, "key": manifest.key, "created_at": manifest.created_at,
        "identity": [list(pair) for pair in manifest.identity],
        "files": [{"name": file.name, "size": file.size, "sha256": file.sha256}
                  for file in manifest.files],
    }, sort_keys=True)
    written = target / f".{MANIFEST}.{secrets.token_hex(4)}"
    descriptor = os.open(written, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                         FILE_MODE)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.rename(written, target / MANIFEST)
    _fsync(target)


def _fetch_file(source: Path, target: Path, expected: ImageFile, link: bool) -> None:
    try:
        if link and _same_device(source, target.parent):
            os.link(source, target)
            size, digest = _hash(target)
        else:
            size, digest = _copy(source, target)
    except FileNotFoundError:
        raise ImageUnusable(f"image file {expected.name} is missing") from None
    if (size, digest) != (expected.size, expected.sha256):
        raise ImageUnusable(f"image file {expected.name} does not match its manifest "
                            f"({size} bytes, {expected.size} expected)")


def _hash(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _copy(source: Path, target: Path) -> tuple[int, str]:
    """Copy while hashing: one read of the source. The copy is private (it holds memory)."""
    digest = hashlib.sha256()
    size = 0
    descriptor = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, FILE_MODE)
    with source.open("rb") as reading, os.fdopen(descriptor, "wb") as writing:
        while chunk := reading.read(CHUNK_BYTES):
            digest.update(chunk)
            writing.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _same_device(path: Path, folder: Path) -> bool:
    return path.stat().st_dev == folder.stat().st_dev


def _fsync(path: Path) -> None:
    # A bucket's FUSE mount may refuse fsync on folders: the upload happened at close.
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _last_write(folder: Path) -> float:
    latest = 0.0
    with contextlib.suppress(OSError):
        latest = folder.stat().st_mtime
        for entry in folder.iterdir():
            with contextlib.suppress(OSError):
                latest = max(latest, entry.stat().st_mtime)
    return latest


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
