"""Which cgroup parent a runtime's sandboxes live under when SANDBOX_CGROUP_PARENT is unset.

It is named per state folder, in the folder: a restart must find its own leftovers there,
and a container whose state folder has the same path as the host server's (both use the
default) must not share the host server's parent. No runsc and no cgroup is touched here."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from sandbox.adapters.runsc.cgroups import PARENT_FILE, remove_parent
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.settings import Settings


def parent_for(state_dir: Path, cgroup_parent: str = "") -> str:
    state_dir.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.replace(Settings(), state_dir=state_dir, cgroup_parent=cgroup_parent)
    return RunscSandboxRuntime(settings)._cgroup_parent()


def test_a_restart_on_the_same_state_folder_keeps_its_cgroup_parent(tmp_path: Path) -> None:
    first = parent_for(tmp_path / "state")

    again = parent_for(tmp_path / "state")

    assert again == first
    assert first.startswith("gvisor-sandbox-")


def test_another_state_folder_at_the_same_path_has_its_own_cgroup_parent(
    tmp_path: Path,
) -> None:
    """As a container's own state volume at the host server's default path."""
    host_server = parent_for(tmp_path / "state")
    shutil.rmtree(tmp_path / "state")

    container = parent_for(tmp_path / "state")

    assert container != host_server


def test_a_state_folder_mounted_at_another_path_keeps_its_cgroup_parent(tmp_path: Path) -> None:
    before = parent_for(tmp_path / "here")
    (tmp_path / "here").rename(tmp_path / "there")

    after = parent_for(tmp_path / "there")

    assert after == before


def test_two_state_folders_have_two_cgroup_parents(tmp_path: Path) -> None:
    assert parent_for(tmp_path / "one") != parent_for(tmp_path / "two")


def test_the_cgroup_parent_is_named_in_the_state_folder(tmp_path: Path) -> None:
    parent = parent_for(tmp_path / "state")

    assert (tmp_path / "state" / PARENT_FILE).read_text().strip() == parent
    assert sorted(path.name for path in (tmp_path / "state").iterdir()) == [PARENT_FILE]


def test_a_garbled_parent_file_is_replaced_by_a_fresh_name(tmp_path: Path) -> None:
    """A name that is not one of ours could point anywhere in the cgroup tree (../..):
    the service never removes cgroups under it."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / PARENT_FILE).write_text("../../system.slice\n")

    parent = parent_for(tmp_path / "state")

    assert parent.startswith("gvisor-sandbox-")
    assert "/" not in parent
    assert (tmp_path / "state" / PARENT_FILE).read_text().strip() == parent


def test_a_configured_cgroup_parent_wins_and_writes_nothing(tmp_path: Path) -> None:
    parent = parent_for(tmp_path / "state", cgroup_parent="chosen-parent")

    assert parent == "chosen-parent"
    assert not (tmp_path / "state" / PARENT_FILE).exists()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_removing_a_parent_that_is_not_one_plain_name_is_refused(
    tmp_path: Path, name: str
) -> None:
    """An empty name would be the root of the tree: every empty cgroup on the host."""
    (tmp_path / "memory" / "someone-else").mkdir(parents=True)

    with pytest.raises(ValueError, match="not a cgroup parent"):
        remove_parent(name, root=tmp_path)

    assert (tmp_path / "memory" / "someone-else").is_dir()
