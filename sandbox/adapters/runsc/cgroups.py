"""The cgroup the service owns above each sandbox.

runsc creates its own cgroup at `cgroupsPath` and removes it when the container is deleted,
so counters kept there are lost by the time a verdict is needed. The service therefore makes a
parent cgroup per sandbox, sets the memory limit on it and counts the kernel's out-of-memory
kills there until it removes it. Hosts without a writable cgroup tree (some container hosts)
get `NoCgroups`: runsc then runs with `--ignore-cgroups` and memory is bounded by the other
layers.

Measured on this host's cgroup v1 (kernel 6.18, runsc 20240729): when the OOM killer acts,
`failcnt` and `oom_control`'s `oom_kill` of the parent stay 0 (v1 counts kills only in the
cgroup of the killed task, runsc's own child, which is gone by the time runsc returns), and the
peak usage reaches the limit even in sandboxes that were never short of memory (gVisor's own
memory counts there too). The one signal that is both present and exact is v1's OOM
notification: an eventfd registered through `cgroup.event_control`, signalled each time the
OOM killer acts on the cgroup, and only then. cgroup v2 counts kills hierarchically in
`memory.events`.
"""

from __future__ import annotations

import abc
import contextlib
import os
import re
import secrets
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


class SandboxCgroups(abc.ABC):
    @abc.abstractmethod
    def create(self, sandbox_id: str, memory_bytes: int) -> str:
        """Make the parent cgroup; return the `cgroupsPath` to give runsc."""

    @abc.abstractmethod
    def oom_kills(self, sandbox_id: str) -> int:
        """How many times the kernel's OOM killer acted in the sandbox's cgroup since
        `create` (0 where it cannot tell). Callers compare readings: a kill happened between
        two readings when the second is larger."""

    @abc.abstractmethod
    def remove(self, sandbox_id: str) -> None: ...

    @abc.abstractmethod
    def leftovers(self) -> list[str]:
        """Ids of sandbox cgroups still on the host (for cleanup and tests)."""

    @property
    def enabled(self) -> bool:
        return True


def _remove_tree(path: Path) -> None:
    """Remove a cgroup and any children; cgroup folders go with rmdir, deepest first.
    A cgroup that still holds a process cannot go: that is logged, never raised, so the
    rest of a cleanup still happens (and the next start finds it as a leftover)."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir():
            _remove_tree(child)
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("cgroup.remove_failed", path=str(path), error=str(error))


def remove_parent(parent: str, root: Path = CGROUP_ROOT) -> None:
    """Remove a cgroup parent the service made, in every hierarchy (v1 has one per
    controller, v2 one in all), with whatever empty cgroups are left in it. An empty name
    would be the whole tree: refused."""
    if not parent or parent in (".", "..") or "/" in parent:
        raise ValueError(f"not a cgroup parent of the service: {parent!r}")
    for path in (root / parent, *root.glob(f"*/{parent}")):
        _remove_tree(path)


def remove_parent_if_unused(parent: str, root: Path = CGROUP_ROOT) -> None:
    """At a clean stop: remove the parent where it holds nothing. Where a sandbox outlives
    the server, its cgroup keeps the parent, quietly: the next start finds it."""
    if not parent or parent in (".", "..") or "/" in parent:
        raise ValueError(f"not a cgroup parent of the service: {parent!r}")
    for path in (root / parent, *root.glob(f"*/{parent}")):
        with contextlib.suppress(OSError):
            path.rmdir()


PARENT_FILE = "cgroup-parent"
_PARENT_NAME = re.compile(r"gvisor-sandbox-[0-9a-f]{10}")


def parent_of(state_dir: Path) -> str:
    """The cgroup parent of the sandboxes of one state folder, named at random at the
    folder's first start and kept in it. A restart on the same folder finds its own
    leftovers under it; another folder, even at the same path (a container's own state
    volume, beside a host server with the same default path), never shares it."""
    path = state_dir / PARENT_FILE
    try:
        name = path.read_text().strip()
    except FileNotFoundError:
        name = ""
    if _PARENT_NAME.fullmatch(name):
        return name
    if name:
        log.warning("cgroup.parent_file_invalid", path=str(path), content=name[:80])
    fresh = f"gvisor-sandbox-{secrets.token_hex(5)}"
    draft = path.with_name(f"{PARENT_FILE}.{fresh}")
    draft.write_text(fresh + "\n")
    try:
        if name:
            os.replace(draft, path)
            return fresh
        # link, not rename: of two first starts at once, one name wins and both use it.
        os.link(draft, path)
        return fresh
    except FileExistsError:
        return parent_of(state_dir)
    finally:
        draft.unlink(missing_ok=True)
class _OomNotifications:
    """cgroup v1's out-of-memory notification, one eventfd per sandbox cgroup.

    The kernel signals the eventfd when the OOM killer acts on the cgroup, and once more when
    the cgroup is removed: stop watching (close the eventfd) before removing it."""

    def __init__(self) -> None:
        self._eventfds: dict[str, int] = {}
        self._counts: dict[str, int] = {}

    def watch(self, sandbox_id: str, cgroup: Path) -> None:
        self.forget(sandbox_id)
        eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            control = os.open(cgroup / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                (cgroup / "cgroup.event_control").write_text(f"{eventfd} {control}")
            finally:
                os.close(control)
        except OSError as error:
            os.close(eventfd)
            # Without it an OOM kill reads as a plain SIGKILL: worth a warning, not a failure.
            log.warning("cgroup.oom_notification_failed", path=str(cgroup), error=str(error))
            return
        self._eventfds[sandbox_id] = eventfd
        self._counts[sandbox_id] = 0

    def count(self, sandbox_id: str) -> int:
        eventfd = self._eventfds.get(sandbox_id)
        if eventfd is not None:
            with contextlib.suppress(BlockingIOError):
                self._counts[sandbox_id] += os.eventfd_read(eventfd)
        return self._counts.get(sandbox_id, 0)

    def forget(self, sandbox_id: str) -> None:
        eventfd = self._eventfds.pop(sandbox_id, None)
        self._counts.pop(sandbox_id, None)
        if eventfd is not None:
            os.close(eventfd)


class CgroupsV1(SandboxCgroups):
    def __init__(self, parent: str, root: Path = CGROUP_ROOT) -> None:
        self.parent = parent
        self.root = root
        self._notifications = _OomNotifications()

    def _memory(self, sandbox_id: str) -> Path:
        return self.root / "memory" / self.parent / sandbox_id

    def create(self, sandbox_id: str, memory_bytes: int) -> str:
        memory = self._memory(sandbox_id)
        memory.mkdir(parents=True, exist_ok=True)
        (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
        # Where swap accounting exists, swap must not extend the limit.
        with contextlib.suppress(OSError):
            (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
        self._notifications.watch(sandbox_id, memory)
        return f"/{self.parent}/{sandbox_id}/sandbox"

    def oom_kills(self, sandbox_id: str) -> int:
        return self._notifications.count(sandbox_id)

    def remove(self, sandbox_id: str) -> None:
        self._notifications.forget(sandbox_id)
        for controller in self.root.iterdir():
            _remove_tree(controller / self.parent / sandbox_id)

    def leftovers(self) -> list[str]:
        found: set[str] = set()
        for controller in self.root.iterdir():
            parent = controller / self.parent
            if parent.is_dir():
                found.update(child.name for child in parent.iterdir() if child.is_dir())
        return sorted(found)


class CgroupsV2(SandboxCgroups):
    def __init__(self, parent: str, root: Path = CGROUP_ROOT) -> None:
        self.parent_dir = root / parent
        self.root = root

    def create(self, sandbox_id: str, memory_bytes: int) -> str:
        enable = "+memory +pids +cpu"
        self.parent_dir.mkdir(exist_ok=True)
        (self.root / "cgroup.subtree_control").write_text(enable)
        (self.parent_dir / "cgroup.subtree_control").write_text(enable)
        own = self.parent_dir / sandbox_id
        own.mkdir(exist_ok=True)
        (own / "memory.max").write_text(str(memory_bytes))
        (own / "memory.swap.max").write_text("0")
        (own / "cgroup.subtree_control").write_text(enable)
        return f"/{self.parent_dir.name}/{sandbox_id}/sandbox"

    def oom_kills(self, sandbox_id: str) -> int:
        # memory.events is hierarchical: it counts the kills in runsc's child cgroup too.
        try:
            events = (self.parent_dir / sandbox_id / "memory.events").read_text()
        except OSError:
            return 0
        counts = dict(line.split() for line in events.splitlines() if line.strip())
        return int(counts.get("oom_kill", "0"))

    def remove(self, sandbox_id: str) -> None:
        _remove_tree(self.parent_dir / sandbox_id)

    def leftovers(self) -> list[str]:
        if not self.parent_dir.is_dir():
            return []
        return sorted(child.name for child in self.parent_dir.iterdir() if child.is_dir())


class NoCgroups(SandboxCgroups):
    def __init__(self, reason: str = "cgroups are not used") -> None:
        self.reason = reason

    def create(self, sandbox_id: str, memory_bytes: int) -> str:
        return ""

    def oom_kills(self, sandbox_id: str) -> int:
        return 0

    def remove(self, sandbox_id: str) -> None:
        return None

    def leftovers(self) -> list[str]:
        return []

    @property
    def enabled(self) -> bool:
        return False


def detect(parent: str, root: Path = CGROUP_ROOT) -> SandboxCgroups:
    """The cgroup flavour this host offers, or NoCgroups (saying why) when the tree is not
    writable."""
    if (root / "cgroup.controllers").exists():
        candidate: SandboxCgroups = CgroupsV2(parent, root)
        needed = root
    else:
        candidate = CgroupsV1(parent, root)
        needed = root / "memory"
    if not os.access(needed, os.W_OK):
        return NoCgroups(f"the cgroup tree at {needed} is missing or not writable")
    try:
        probe = "probe" + os.urandom(6).hex()
        candidate.create(probe, 64 * 1024 * 1024)
        candidate.remove(probe)
    except OSError as error:
        return NoCgroups(f"a cgroup cannot be made under {needed}: {error.strerror}")
    return candidate
