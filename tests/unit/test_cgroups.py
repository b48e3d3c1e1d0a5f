"""The service's own cgroups, on a fake cgroup tree in a temporary folder.

In a real cgroup tree the limit files vanish with their folder, so removing a cgroup is an
rmdir of each folder, deepest first. A temporary folder cannot imitate that for files, so the
removal tests use trees of folders only, as runsc leaves them in the other controllers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.adapters.runsc.cgroups import (
    CgroupsV1,
    CgroupsV2,
    NoCgroups,
    detect,
    remove_parent,
    remove_parent_if_unused,
)

SANDBOX = "0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba98"
MIB = 1024 * 1024


def folders(*paths: Path) -> None:
    for path in paths:
        path.mkdir(parents=True)


def test_v1_create_sets_the_memory_limit_without_swap(tmp_path: Path) -> None:
    cgroups = CgroupsV1("owned", root=tmp_path)

    cgroups_path = cgroups.create(SANDBOX, 128 * MIB)

    memory = tmp_path / "memory" / "owned" / SANDBOX
    assert (memory / "memory.limit_in_bytes").read_text() == str(128 * MIB)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(128 * MIB)
    assert cgroups_path == f"/owned/{SANDBOX}/sandbox"


def kernel_notifies_oom(memory: Path) -> None:
    """What the kernel does when the OOM killer acts on a v1 cgroup: signal every eventfd
    registered for `memory.oom_control` through `cgroup.event_control` ("<eventfd> <fd>")."""
    eventfd, _control = (memory / "cgroup.event_control").read_text().split()
    os.eventfd_write(int(eventfd), 1)


def v1_tree(root: Path) -> Path:
    """A sandbox cgroup as the kernel shows it before the service writes to it."""
    memory = root / "memory" / "owned" / SANDBOX
    memory.mkdir(parents=True)
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    return memory


def test_v1_counts_the_kernels_oom_notifications_since_create(tmp_path: Path) -> None:
    memory = v1_tree(tmp_path)
    cgroups = CgroupsV1("owned", root=tmp_path)
    cgroups.create(SANDBOX, 128 * MIB)
    before = cgroups.oom_kills(SANDBOX)

    kernel_notifies_oom(memory)
    kernel_notifies_oom(memory)

    assert before == 0
    assert cgroups.oom_kills(SANDBOX) == 2
    assert cgroups.oom_kills(SANDBOX) == 2


def test_v1_a_cgroup_near_its_limit_without_an_oom_notification_has_no_kill(
    tmp_path: Path,
) -> None:
    """The peak usage and the failure count are no verdict: on this host the peak reaches the
    limit in sandboxes never short of memory."""
    memory = v1_tree(tmp_path)
    cgroups = CgroupsV1("owned", root=tmp_path)
    cgroups.create(SANDBOX, 128 * MIB)
    (memory / "memory.max_usage_in_bytes").write_text(f"{128 * MIB}\n")
    (memory / "memory.failcnt").write_text("3\n")

    assert cgroups.oom_kills(SANDBOX) == 0


def test_v1_create_again_counts_afresh_and_remove_stops_counting(tmp_path: Path) -> None:
    memory = v1_tree(tmp_path)
    cgroups = CgroupsV1("owned", root=tmp_path)
    cgroups.create(SANDBOX, 128 * MIB)
    kernel_notifies_oom(memory)
    cgroups.oom_kills(SANDBOX)

    cgroups.create(SANDBOX, 128 * MIB)  # a restore under the same id
    recreated = cgroups.oom_kills(SANDBOX)
    cgroups.remove(SANDBOX)

    assert recreated == 0
    assert cgroups.oom_kills(SANDBOX) == 0


def test_v1_remove_closes_the_eventfd(tmp_path: Path) -> None:
    memory = v1_tree(tmp_path)
    cgroups = CgroupsV1("owned", root=tmp_path)
    cgroups.create(SANDBOX, 128 * MIB)
    eventfd = int((memory / "cgroup.event_control").read_text().split()[0])

    cgroups.remove(SANDBOX)

    with pytest.raises(OSError):
        os.fstat(eventfd)


def test_v1_without_an_oom_control_file_a_sandbox_still_gets_its_cgroup(tmp_path: Path) -> None:
    cgroups = CgroupsV1("owned", root=tmp_path)

    cgroups_path = cgroups.create(SANDBOX, 128 * MIB)

    assert cgroups_path == f"/owned/{SANDBOX}/sandbox"
    assert cgroups.oom_kills(SANDBOX) == 0


def test_v1_remove_deletes_the_sandbox_in_every_controller_and_nothing_else(
    tmp_path: Path,
) -> None:
    folders(
        *(tmp_path / controller / "owned" / SANDBOX / "sandbox"
          for controller in ("memory", "pids", "cpu")),
        tmp_path / "pids" / "owned" / OTHER / "sandbox",
        tmp_path / "freezer",
    )
    cgroups = CgroupsV1("owned", root=tmp_path)

    cgroups.remove(SANDBOX)

    assert cgroups.leftovers() == [OTHER]
    assert (tmp_path / "memory" / "owned").is_dir()


def test_v1_remove_of_an_unknown_sandbox_is_harmless(tmp_path: Path) -> None:
    folders(tmp_path / "memory" / "owned")

    CgroupsV1("owned", root=tmp_path).remove(SANDBOX)

    assert (tmp_path / "memory" / "owned").is_dir()


def test_v1_leftovers_lists_each_sandbox_once_across_controllers(tmp_path: Path) -> None:
    folders(
        tmp_path / "memory" / "owned" / OTHER,
        tmp_path / "memory" / "owned" / SANDBOX,
        tmp_path / "pids" / "owned" / SANDBOX,
        tmp_path / "pids" / "someone-else" / "not-ours",
    )
    (tmp_path / "memory" / "owned" / "memory.limit_in_bytes").write_text("0")

    assert CgroupsV1("owned", root=tmp_path).leftovers() == [SANDBOX, OTHER]


def test_v2_create_enables_controllers_and_sets_the_memory_limit_without_swap(
    tmp_path: Path,
) -> None:
    cgroups = CgroupsV2("owned", root=tmp_path)

    cgroups_path = cgroups.create(SANDBOX, 64 * MIB)

    own = tmp_path / "owned" / SANDBOX
    assert (own / "memory.max").read_text() == str(64 * MIB)
    assert (own / "memory.swap.max").read_text() == "0"
    for path in (tmp_path, tmp_path / "owned", own):
        assert (path / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert cgroups_path == f"/owned/{SANDBOX}/sandbox"


@pytest.mark.parametrize(
    ("events", "kills"),
    [
        ("low 0\nhigh 0\nmax 12\noom 1\noom_kill 2\n", 2),
        ("low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\n", 0),
        ("", 0),
    ],
)
def test_v2_oom_kills_reads_the_oom_kill_count(tmp_path: Path, events: str, kills: int) -> None:
    cgroups = CgroupsV2("owned", root=tmp_path)
    cgroups.create(SANDBOX, 64 * MIB)
    (tmp_path / "owned" / SANDBOX / "memory.events").write_text(events)

    assert cgroups.oom_kills(SANDBOX) == kills


def test_v2_oom_kills_is_zero_when_the_cgroup_is_gone(tmp_path: Path) -> None:
    assert CgroupsV2("owned", root=tmp_path).oom_kills(SANDBOX) == 0


def test_v2_remove_deletes_the_sandbox_tree_and_nothing_else(tmp_path: Path) -> None:
    folders(tmp_path / "owned" / SANDBOX / "sandbox", tmp_path / "owned" / OTHER)
    cgroups = CgroupsV2("owned", root=tmp_path)

    cgroups.remove(SANDBOX)

    assert cgroups.leftovers() == [OTHER]


def test_v2_leftovers_is_empty_before_the_parent_exists(tmp_path: Path) -> None:
    assert CgroupsV2("owned", root=tmp_path).leftovers() == []


def test_without_cgroups_runsc_gets_no_cgroups_path_and_nothing_is_left() -> None:
    cgroups = NoCgroups()

    assert cgroups.create(SANDBOX, 64 * MIB) == ""
    assert cgroups.oom_kills(SANDBOX) == 0
    assert cgroups.leftovers() == []
    assert cgroups.enabled is False


def test_a_host_without_a_memory_controller_gets_no_cgroups(tmp_path: Path) -> None:
    assert isinstance(detect("owned", root=tmp_path), NoCgroups)


def test_the_cgroups_in_use_are_enabled() -> None:
    assert CgroupsV1("owned").enabled is True
    assert CgroupsV2("owned").enabled is True


def test_remove_parent_takes_the_parent_from_every_hierarchy_and_nothing_else(
    tmp_path: Path,
) -> None:
    folders(
        tmp_path / "memory" / "owned" / SANDBOX / "sandbox",
        tmp_path / "pids" / "owned",
        tmp_path / "owned" / OTHER,
        tmp_path / "memory" / "someone-else" / OTHER,
    )

    remove_parent("owned", root=tmp_path)

    assert not (tmp_path / "memory" / "owned").exists()
    assert not (tmp_path / "pids" / "owned").exists()
    assert not (tmp_path / "owned").exists()
    assert (tmp_path / "memory" / "someone-else" / OTHER).is_dir()


def test_an_unused_parent_goes_at_a_clean_stop_and_one_holding_a_sandbox_stays(
    tmp_path: Path,
) -> None:
    folders(
        tmp_path / "memory" / "owned" / SANDBOX,
        tmp_path / "pids" / "owned",
        tmp_path / "memory" / "someone-else",
    )

    remove_parent_if_unused("owned", root=tmp_path)

    assert (tmp_path / "memory" / "owned" / SANDBOX).is_dir()
    assert not (tmp_path / "pids" / "owned").exists()
    assert (tmp_path / "memory" / "someone-else").is_dir()


def test_a_host_without_cgroups_is_told_why(tmp_path: Path) -> None:
    found = detect("owned", root=tmp_path)

    assert isinstance(found, NoCgroups)
    assert found.reason == f"the cgroup tree at {tmp_path / 'memory'} is missing or not writable"
