"""The contract of the image store (sandbox/domain/image_store.py): images published with a
manifest written last, fetched only whole and checked, removed manifest first, collected when
orphaned. Run on one filesystem (files moved in and linked out) and across two (copied both
ways, as between a local disk and a mounted bucket)."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.adapters.folder_image_store import MANIFEST, FolderImageStore
from sandbox.domain.image_store import (
    FetchedImage,
    ImageExists,
    ImageStore,
    ImageUnusable,
)

pytestmark = pytest.mark.anyio

IDENTITY = {"runtime": "runsc", "version": "20240729", "platform": "systrap", "rootfs": "r1"}
FILES = {"checkpoint.img": os.urandom(300_000), "pages.img": b"p" * 5000, "empty.img": b""}


class Clock:
    """The clock of manifests and of collection; files get the real clock's times, which
    `aged` moves back."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["same-filesystem", "copying"])
async def images(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> FolderImageStore:
    store = FolderImageStore(tmp_path / "shared", tmp_path / "staging",
                             link=request.param == "same-filesystem", clock=clock)
    await store.start()
    return store


@pytest.fixture
def folders(tmp_path: Path) -> Iterator[Folders]:
    yield Folders(tmp_path / "written")


class Folders:
    """Local folders as runsc checkpoint writes them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made = 0

    def image(self, files: dict[str, bytes] | None = None) -> str:
        self.made += 1
        folder = self.root / str(self.made)
        folder.mkdir(parents=True)
        for name, data in (FILES if files is None else files).items():
            (folder / name).write_bytes(data)
        return str(folder)


def read(fetched: FetchedImage) -> dict[str, bytes]:
    return {entry.name: entry.read_bytes() for entry in Path(fetched.folder).iterdir()}


def stored(images: FolderImageStore, key: str) -> Path:
    return images.root / key


def aged(folder: Path, seconds: float) -> None:
    """As if the folder and its files were last written `seconds` ago."""
    then = time.time() - seconds
    for path in (*folder.iterdir(), folder):
        os.utime(path, (then, then))


async def test_a_published_image_is_fetched_with_the_same_bytes_and_its_manifest(
    images: ImageStore, folders: Folders
) -> None:
    published = await images.publish("one", folders.image(), IDENTITY)

    fetched = await images.fetch("one")

    assert read(fetched) == FILES
    assert fetched.manifest == published
    assert dict(published.identity) == IDENTITY
    assert {file.name: file.size for file in published.files} == {
        name: len(data) for name, data in FILES.items()}
    assert len({file.sha256 for file in published.files}) == 3
    assert published.size == sum(map(len, FILES.values()))
    assert await images.manifest("one") == published


async def test_an_image_is_fetched_many_times_each_copy_its_own(
    images: ImageStore, folders: Folders
) -> None:
    await images.publish("template", folders.image(), IDENTITY)

    first, second = await images.fetch("template"), await images.fetch("template")
    await images.release(first)

    assert not Path(first.folder).exists()
    assert read(second) == FILES
    assert read(await images.fetch("template")) == FILES


async def test_a_copy_outlives_the_removal_of_its_image(
    images: ImageStore, folders: Folders
) -> None:
    await images.publish("gone", folders.image(), IDENTITY)
    fetched = await images.fetch("gone")

    await images.remove("gone")

    assert read(fetched) == FILES
    assert await images.manifest("gone") is None
    with pytest.raises(ImageUnusable):
        await images.fetch("gone")


async def test_files_without_a_manifest_are_no_image(
    images: FolderImageStore, folders: Folders
) -> None:
    await images.publish("half", folders.image(), IDENTITY)
    (stored(images, "half") / MANIFEST).unlink()  # as if the upload stopped before it

    with pytest.raises(ImageUnusable):
        await images.fetch("half")
    assert await images.manifest("half") is None
    assert await images.published() == []
    assert list(images.staging.iterdir()) == []


async def test_a_manifest_cut_short_makes_the_image_unusable(
    images: FolderImageStore, folders: Folders
) -> None:
    await images.publish("cut", folders.image(), IDENTITY)
    manifest = stored(images, "cut") / MANIFEST
    manifest.write_text(manifest.read_text()[:40])

    with pytest.raises(ImageUnusable):
        await images.fetch("cut")
    assert await images.published() == []


@pytest.mark.parametrize("damage", ["one byte changed", "cut short", "missing", "grown"])
async def test_a_file_that_does_not_match_its_manifest_is_refused_and_nothing_is_left(
    images: FolderImageStore, folders: Folders, damage: str
) -> None:
    await images.publish("damaged", folders.image(), IDENTITY)
    path = stored(images, "damaged") / "checkpoint.img"
    data = path.read_bytes()
    path.unlink()  # a new file: a linked copy fetched before must not see the change
    if damage == "one byte changed":
        path.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    elif damage == "cut short":
        path.write_bytes(data[:-1])
    elif damage == "grown":
        path.write_bytes(data + b"x")

    with pytest.raises(ImageUnusable):
        await images.fetch("damaged")
    assert list(images.staging.iterdir()) == []


async def test_a_publish_that_fails_half_way_leaves_no_image(
    images: FolderImageStore, folders: Folders
) -> None:
    folder = Path(folders.image())
    (folder / "zz-a-folder").mkdir()  # taken last: the other files are in by then

    with pytest.raises(ValueError, match="regular files"):
        await images.publish("failed", str(folder), IDENTITY)

    assert await images.manifest("failed") is None
    assert not stored(images, "failed").exists()


async def test_a_published_image_is_never_replaced(
    images: ImageStore, folders: Folders
) -> None:
    await images.publish("kept", folders.image(), IDENTITY)

    with pytest.raises(ImageExists):
        await images.publish("kept", folders.image({"other.img": b"other"}), IDENTITY)

    assert read(await images.fetch("kept")) == FILES


async def test_a_half_published_leftover_is_replaced_by_a_new_publish(
    images: FolderImageStore, folders: Folders
) -> None:
    leftover = stored(images, "again")
    leftover.mkdir()
    (leftover / "checkpoint.img").write_bytes(b"from a publish that died")

    await images.publish("again", folders.image({"checkpoint.img": b"whole"}), IDENTITY)

    assert read(await images.fetch("again")) == {"checkpoint.img": b"whole"}


async def test_remove_is_idempotent_and_takes_the_manifest_first(
    images: FolderImageStore, folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    await images.publish("doomed", folders.image(), IDENTITY)
    seen_by_rmtree: list[bool] = []
    import sandbox.adapters.folder_image_store as adapter

    real = adapter._remove_tree

    def watching(path: Path) -> None:
        seen_by_rmtree.append((path / MANIFEST).exists())
        real(path)

    monkeypatch.setattr(adapter, "_remove_tree", watching)

    await images.remove("doomed")
    await images.remove("doomed")
    await images.remove("never-published")

    assert seen_by_rmtree and not any(seen_by_rmtree)
    assert not stored(images, "doomed").exists()


async def test_published_gives_complete_images_under_a_prefix_oldest_first(
    images: FolderImageStore, folders: Folders, clock: Clock
) -> None:
    await images.publish("checkpoint-b", folders.image(), IDENTITY)
    clock.now += 1
    await images.publish("checkpoint-a", folders.image(), IDENTITY)
    await images.publish("template-x", folders.image(), IDENTITY)
    (stored(images, "checkpoint-c")).mkdir()  # half published

    listed = await images.published("checkpoint-")

    assert [manifest.key for manifest in listed] == ["checkpoint-b", "checkpoint-a"]
    assert {manifest.key for manifest in await images.published()} == {
        "checkpoint-a", "checkpoint-b", "template-x"}


async def test_collect_removes_old_orphans_and_half_published_images_only(
    images: FolderImageStore, folders: Folders
) -> None:
    for key in ("checkpoint-kept", "checkpoint-orphan", "template-other"):
        await images.publish(key, folders.image(), IDENTITY)
    stored(images, "checkpoint-half").mkdir()
    (stored(images, "checkpoint-half") / "checkpoint.img").write_bytes(b"half")
    for key in ("checkpoint-kept", "checkpoint-orphan", "template-other", "checkpoint-half"):
        aged(stored(images, key), 3600)
    await images.publish("checkpoint-young", folders.image(), IDENTITY)

    removed = await images.collect("checkpoint-", keep={"checkpoint-kept"},
                                   older_than_s=1800)

    assert sorted(removed) == ["checkpoint-half", "checkpoint-orphan"]
    assert {manifest.key for manifest in await images.published()} == {
        "checkpoint-kept", "checkpoint-young", "template-other"}
    assert not stored(images, "checkpoint-half").exists()


async def test_a_half_published_image_still_being_written_is_spared(
    images: FolderImageStore, folders: Folders
) -> None:
    stored(images, "checkpoint-uploading").mkdir()
    (stored(images, "checkpoint-uploading") / "checkpoint.img").write_bytes(b"arriving")
    aged(stored(images, "checkpoint-uploading"), 3600)
    (stored(images, "checkpoint-uploading") / "pages.img").write_bytes(b"just now")

    assert await images.collect("checkpoint-", keep=(), older_than_s=1800) == []
    assert stored(images, "checkpoint-uploading").exists()


@pytest.mark.parametrize("key", ["", "../escape", "a/b", "Upper", "-dash", ".hidden", "a..b",
                                 "x" * 129])
async def test_keys_that_are_not_safe_names_are_refused(
    images: ImageStore, folders: Folders, key: str
) -> None:
    with pytest.raises(ValueError):
        await images.publish(key, folders.image(), IDENTITY)
    with pytest.raises(ValueError):
        await images.fetch(key)
    with pytest.raises(ValueError):
        await images.remove(key)


async def test_images_and_copies_are_readable_by_their_owner_only(
    images: FolderImageStore, folders: Folders
) -> None:
    os.umask(0o022)
    await images.publish("private", folders.image(), IDENTITY)
    fetched = await images.fetch("private")

    for folder in (images.root, stored(images, "private"), images.staging,
                   Path(fetched.folder)):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for folder in (stored(images, "private"), Path(fetched.folder)):
        for entry in folder.iterdir():
            assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry


async def test_a_copy_left_by_a_crash_is_removed_at_start(
    images: FolderImageStore, folders: Folders, tmp_path: Path
) -> None:
    await images.publish("crash", folders.image(), IDENTITY)
    await images.fetch("crash")  # never released: the server died

    restarted = FolderImageStore(images.root, images.staging)
    await restarted.start()

    assert list(images.staging.iterdir()) == []
    assert read(await restarted.fetch("crash")) == FILES


async def test_a_release_outside_the_staging_folder_is_refused(
    images: ImageStore, folders: Folders, tmp_path: Path
) -> None:
    manifest = await images.publish("some", folders.image(), IDENTITY)
    elsewhere = tmp_path / "not-staging"
    elsewhere.mkdir()

    with pytest.raises(ValueError):
        await images.release(FetchedImage(str(elsewhere), manifest))
    assert elsewhere.exists()


async def test_the_manifest_records_each_file_as_json(
    images: FolderImageStore, folders: Folders
) -> None:
    await images.publish("plain", folders.image({"checkpoint.img": b"abc"}), IDENTITY)

    manifest = json.loads((stored(images, "plain") / MANIFEST).read_text())

    assert manifest["files"] == [{
        "name": "checkpoint.img", "size": 3,
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]
    assert dict(map(tuple, manifest["identity"])) == IDENTITY

