"""The package cache on disk: layers, when each was last used, and which requested set
resolved to which layer. Layout under STATE_DIR/packages:

    <layer key>/              one resolved set, installed; mounted read-only into sandboxes
    .used/<layer key>         when it was last asked for (mtime) and its size (content)
    .pins/<layer key>         the releases the layer holds (to rebuild it on another instance)
    .aliases/<request key>    the layer a requested set resolved to, with its pins
    .building-<token>/        a build in progress (pip_process.BuildFolder)
    .evicting-<key>-<token>/  a layer being deleted

An alias lets a set asked for again be served without running pip. It is trusted as long as
its layer is kept: when the layer is evicted the alias goes with it (the set is resolved
afresh next time, and may then get newer releases), and beyond MAX_ALIASES the least
recently used aliases are dropped. The pins it holds are checked against the package policy
at every use, so a package denied after a restart is refused from the cache too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from sandbox.adapters.pip_process import BLOCK, BuildFolder, entry_footprint, footprint
from sandbox.domain.packages import ResolvedSet

MAX_ALIASES = 4096
_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Alias:
    layer: str
    resolved: ResolvedSet


@dataclass(frozen=True)
class CachedLayer:
    key: str
    size: int
    used_at: float


class LayerCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._used = root / ".used"
        self._pins = root / ".pins"
        self._aliases = root / ".aliases"

    def layer(self, key: str) -> Path:
        return self.root / key

    def prepare(self) -> None:
        """Make the folders and remove what a crash left half-built or half-deleted."""
        self.prepare_folders()
        for pattern in (".building-*", ".evicting-*"):
            for leftover in self.root.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)
        for half_written in self._aliases.glob(".*"):
            half_written.unlink(missing_ok=True)

    def prepare_folders(self) -> None:
        self._used.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._aliases.mkdir(exist_ok=True, mode=0o700)
        self._pins.mkdir(exist_ok=True, mode=0o700)

    def remember_pins(self, layer_key: str, resolved: ResolvedSet) -> None:
        self.prepare_folders()
        written = self._pins / f".{layer_key}.{secrets.token_hex(4)}"
        written.write_text(json.dumps(list(resolved.pins)))
        written.rename(self._pins / layer_key)

    def pins(self, layer_key: str) -> ResolvedSet | None:
        """The releases of a layer: from its pins file, else (a layer made before those
        existed) from an alias that names it."""
        try:
            return ResolvedSet(tuple(json.loads((self._pins / layer_key).read_text())))
        except (OSError, ValueError, TypeError):
            pass
        with contextlib.suppress(OSError):
            for path in self._aliases.iterdir():
                alias = self._read(path) if _KEY.fullmatch(path.name) else None
                if alias is not None and alias.layer == layer_key:
                    return alias.resolved
        return None

    def new_build(self) -> BuildFolder:
        self.prepare_folders()
        build = BuildFolder(self.root / f".building-{secrets.token_hex(8)}")
        build.tmp.mkdir(parents=True)
        return build

    def alias(self, request_key: str) -> Alias | None:
        """The layer `request_key` resolved to, if that layer is still here; a stale alias is
        removed."""
        path = self._aliases / request_key
        alias = self._read(path)
        if alias is None:
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return alias

    def _read(self, path: Path) -> Alias | None:
        try:
            data = json.loads(path.read_text())
            alias = Alias(data["layer"], ResolvedSet(tuple(data["pins"])))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _KEY.fullmatch(alias.layer) or not self.layer(alias.layer).is_dir():
            return None
        return alias

    def remember(self, request_key: str, layer_key: str, resolved: ResolvedSet) -> None:
        self.prepare_folders()
        written = self._aliases / f".{request_key}.{secrets.token_hex(4)}"
        written.write_text(json.dumps({"layer": layer_key, "pins": list(resolved.pins)}))
        written.rename(self._aliases / request_key)

    def prune_aliases(self, layers_removed: bool) -> None:
        """Drop aliases of layers that are gone (when some were removed), then the least
        recently used beyond MAX_ALIASES."""
        aliases = []
        for path in self._aliases.iterdir():
            if not _KEY.fullmatch(path.name):
                continue  # an alias being written
            if layers_removed and self._read(path) is None:
                path.unlink(missing_ok=True)
                continue
            with contextlib.suppress(FileNotFoundError):
                aliases.append((path.stat().st_mtime, path))
        for _, path in sorted(aliases, reverse=True)[MAX_ALIASES:]:
            path.unlink(missing_ok=True)

    def touch(self, key: str) -> None:
        record = self._used / key
        try:
            os.utime(record)
        except FileNotFoundError:
            self.prepare_folders()
            record.touch()

    def record(self, key: str, size: int) -> None:
        (self._used / key).write_text(str(size))

    def used_at(self, key: str, default: float) -> float:
        try:
            return (self._used / key).stat().st_mtime
        except FileNotFoundError:
            return default

    def layers(self) -> list[CachedLayer]:
        """Every complete layer."""
        found = []
        for entry in self.root.iterdir():
            if not (_KEY.fullmatch(entry.name) and entry.is_dir()):
                continue
            record = self._used / entry.name
            try:
                size = int(record.read_text())
                used_at = record.stat().st_mtime
            except (OSError, ValueError):
                size, used_at = footprint(entry), entry.stat().st_mtime
                self.record(entry.name, size)
            found.append(CachedLayer(entry.name, size, used_at))
        return found

    def take_away(self, key: str) -> Path:
        """Rename a layer out of reach (no caller is handed it from now on); delete the folder
        returned, in a thread."""
        target = self.root / f".evicting-{key}-{secrets.token_hex(4)}"
        self.layer(key).rename(target)
        (self._used / key).unlink(missing_ok=True)
        (self._pins / key).unlink(missing_ok=True)
        return target


def finish(layer: Path) -> int:
    """Drop console scripts (they point at the host's interpreter), make everything readable
    by the sandbox's user, and return what the layer takes on disk."""
    shutil.rmtree(layer / "bin", ignore_errors=True)
    layer.mkdir(exist_ok=True)  # a set of wheels can install nothing at all
    size = 0
    for folder, subfolders, files in os.walk(layer):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                os.chmod(path, 0o755 if info.st_mode & stat.S_IXUSR else 0o644)
            size += entry_footprint(info)
        size += len(subfolders) * BLOCK
    return size


def publish(built: Path, layer: Path) -> None:
    try:
        built.rename(layer)
    except OSError:
        if not layer.is_dir():  # otherwise another build published the same releases first
            raise
