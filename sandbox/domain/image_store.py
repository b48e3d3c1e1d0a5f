"""The port of checkpoint images kept where every instance sees them (a bucket mounted as a
folder, NFS, or for one instance a folder in its state folder).

An image is a flat set of files under a key, written by `runsc checkpoint` into a local
folder first. Publishing copies (or moves) them into the store one by one, then writes the
image's manifest last: every file with its size and sha256, and the identity of what made it
(runsc version, platform, rootfs, agent). An image without a complete manifest does not exist:
it is never listed, never fetched, and it is collected once old enough. Fetching copies the
image into a local folder and checks every file against the manifest on the way, so a restore
never starts from a half-uploaded or damaged image.

Used by suspend and restore (one image per suspend, removed after its restore) and by
templates (an image restored many times under new ids).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sandbox.domain.errors import SandboxError

# Keys become folder names in the store: a safe name, the same on every filesystem.
IMAGE_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


def checked_image_key(key: str) -> str:
    if not IMAGE_KEY.fullmatch(key) or ".." in key:
        raise ValueError(f"not an image key: {key!r}")
    return key


class ImageUnusable(SandboxError):
    """The image cannot be restored: it has no complete manifest (never published, half
    published, being removed), or a file does not match its manifest."""

    code = "image_unusable"


class ImageExists(SandboxError):
    """A complete image is published under this key already; images are immutable."""

    code = "image_exists"


@dataclass(frozen=True)
class ImageFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ImageManifest:
    """What a published image holds. `created_at` is seconds since the epoch by the clock of
    the instance that published it; `identity` what the image depends on (see
    `SandboxRuntime.identity`)."""

    key: str
    files: tuple[ImageFile, ...]
    identity: tuple[tuple[str, str], ...]
    created_at: float

    @property
    def size(self) -> int:
        return sum(file.size for file in self.files)


@dataclass(frozen=True)
class FetchedImage:
    """A verified local copy of an image: a folder runsc can restore from, private to this
    instance, until `ImageStore.release` removes it."""

    folder: str
    manifest: ImageManifest


class ImageStore(abc.ABC):
    """Checkpoint images shared by every instance.

    Contract, for every implementation:
    - `publish` takes the files of a local folder (flat: regular files only) into the store
      under `key`, hashing each, and writes the manifest last; it may move the files rather
      than copy them, so the caller removes the folder afterwards whatever happened. Until
      the manifest is written the image does not exist; a publish that fails leaves none.
      A key holding a complete image is refused (ImageExists); a half-published leftover
      under it is replaced.
    - `fetch` gives a local copy checked file by file against the manifest (size and
      sha256); ImageUnusable, leaving no local copy, when the manifest is missing or
      incomplete or a file does not match. Every fetch gives a copy of its own, so one image
      can be restored many times, and a copy outlives the image's removal.
    - `remove` takes the manifest away first (the image stops existing at once), then the
      files; removing a key that holds nothing does nothing.
    - `collect` removes, among keys starting with `prefix`, those not in `keep` whose last
      write is older than `older_than_s`, complete or not: what a crash or a lost race left.
    - Keys are `IMAGE_KEY` names; any other is a ValueError.
    """

    @abc.abstractmethod
    async def publish(self, key: str, folder: str, identity: Mapping[str, str]) -> ImageManifest:
        ...

    @abc.abstractmethod
    async def fetch(self, key: str) -> FetchedImage: ...

    @abc.abstractmethod
    async def release(self, fetched: FetchedImage) -> None:
        """Remove a local copy `fetch` gave; idempotent."""

    @abc.abstractmethod
    async def manifest(self, key: str) -> ImageManifest | None:
        """The image's manifest when it is complete; None otherwise."""

    @abc.abstractmethod
    async def published(self, prefix: str = "") -> list[ImageManifest]:
        """Complete images whose keys start with `prefix`, oldest first."""

    @abc.abstractmethod
    async def remove(self, key: str) -> None: ...

    @abc.abstractmethod
    async def collect(
        self, prefix: str, keep: Collection[str], older_than_s: float
    ) -> list[str]:
        """Keys removed."""
