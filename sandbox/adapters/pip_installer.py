"""`PipPackageInstaller`: the PackageInstaller port with the host's pip, wheels only.

pip runs on the host but never runs package code: it is told the sandbox's interpreter and
platforms and `--only-binary=:all:`, so it only unpacks wheels (an sdist would need its
setup.py run, and is refused). Layout under STATE_DIR/packages:

    <key>/                       one installed set, mounted read-only into sandboxes
    .used/<key>                  when it was last asked for (mtime) and its size (content)
    .building-<key>-<token>/     a build in progress: layer/ (pip's target) and tmp/
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path

import structlog

from sandbox.domain.errors import PackageResolutionFailed
from sandbox.domain.metrics import Metrics, NoMetrics
from sandbox.domain.packages import RequirementSet
from sandbox.domain.ports import PackageInstaller
from sandbox.settings import Settings

log = structlog.get_logger(__name__)

PYTHON_VERSION = "3.11"
PYTHON_TAG = "cp311"
# The rootfs is Debian bookworm (glibc 2.36) on x86_64. pip does not widen a manylinux_2_X
# tag to older glibcs, so every compatible one is named, newest first as pip ranks them.
# linux_x86_64 wheels are built for one machine only and are never taken.
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
)
MAX_PARALLEL_BUILDS = 2
MESSAGE_CHARS = 1000
MESSAGE_LINES = 5
# A layer asked for this recently is never evicted: a sandbox may be about to mount it.
RECENT_USE_S = 60.0
PIP_VERSION_TIMEOUT_S = 30.0
# The server's own PIP_* variables do not reach pip, except those that say how to reach an
# index (the machine's pip configuration files are read as usual).
_PIP_REACH = frozenset({
    "PIP_CONFIG_FILE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT",
    "PIP_CLIENT_CERT", "PIP_TRUSTED_HOST", "PIP_PROXY", "PIP_TIMEOUT", "PIP_DEFAULT_TIMEOUT",
    "PIP_RETRIES",
})
_KEY = re.compile(r"[0-9a-f]{64}")

InUse = Callable[[], Awaitable[Collection[str]]]


class PipPackageInstaller(PackageInstaller):
    """`in_use`, when given, names the layer folders sandboxes still hold (running or
    suspended); eviction never removes those, nor the layer just built, nor one asked for in
    the last minute. `pip` is the command that runs pip (tests wrap it)."""

    def __init__(
        self,
        settings: Settings,
        in_use: InUse | None = None,
        pip: Sequence[str] = (sys.executable, "-I", "-m", "pip"),
        metrics: Metrics | None = None,
    ) -> None:
        self._root = settings.state_dir / "packages"
        self._used = self._root / ".used"
        self._settings = settings
        self._in_use = in_use
        self._pip = list(pip)
        self._index_identity = json.dumps(
            [settings.pip_index_url, settings.find_links(), settings.pip_no_index]
        )
        self._builds: dict[str, asyncio.Task[str]] = {}
        self._slots = asyncio.Semaphore(MAX_PARALLEL_BUILDS)
        self._pip_problem: str | None = None
        self._metrics = metrics or NoMetrics()

    async def start(self) -> None:
        """Make the cache folder and remove what a crash left half-built."""
        await asyncio.to_thread(self._prepare)
        self._pip_problem = await self._check_pip()

    async def close(self) -> None:
        builds = list(self._builds.values())
        for task in builds:
            task.cancel()
        await asyncio.gather(*builds, return_exceptions=True)

    def key(self, requirements: RequirementSet) -> str:
        return requirements.key(PYTHON_TAG, ",".join(PLATFORMS), self._index_identity)

    async def readiness(self) -> list[str]:
        if self._pip_problem is None:
            self._pip_problem = await self._check_pip()
        problems = [self._pip_problem] if self._pip_problem else []
        try:
            await asyncio.to_thread(self._prepare_folders)
        except OSError as error:
            problems.append(f"the package cache {self._root} cannot be made: {error.strerror}")
        else:
            if not os.access(self._root, os.W_OK):
                problems.append(f"the package cache {self._root} is not writable")
        return problems

    async def layer_for(self, requirements: RequirementSet) -> str:
        if not requirements:
            raise ValueError("an empty requirement set has no layer")
        key = self.key(requirements)
        layer = self._root / key
        if layer.is_dir():
            self._touch(key)
            self._metrics.package_layer_requested("hit")
            return str(layer)
        task = self._builds.get(key)
        if task is None:
            task = asyncio.create_task(self._build(key, requirements))
            self._builds[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        try:
            # Shielded: one caller giving up does not stop the build the others wait for.
            built = await asyncio.shield(task)
        except PackageResolutionFailed:
            self._metrics.package_layer_requested("failed")
            raise
        self._metrics.package_layer_requested("built")
        return built

    def _forget(self, key: str, task: asyncio.Task[str]) -> None:
        self._builds.pop(key, None)
        if not task.cancelled():
            task.exception()  # marks it retrieved: a failure nobody waits for is no warning

    async def _build(self, key: str, requirements: RequirementSet) -> str:
        layer = self._root / key
        async with self._slots:
            if layer.is_dir():
                self._touch(key)
                return str(layer)
            await asyncio.to_thread(self._prepare_folders)
            work = self._root / f".building-{key}-{secrets.token_hex(4)}"
            started = time.monotonic()
            try:
                await asyncio.to_thread((work / "tmp").mkdir, parents=True)
                await self._run_pip(requirements, work)
                size = await asyncio.to_thread(_finish, work / "layer")
                limit = self._settings.max_layer_mb * 1024 * 1024
                if size > limit:
                    raise PackageResolutionFailed(
                        f"the packages take {size / 2**20:.0f} MB installed, more than the "
                        f"limit of {self._settings.max_layer_mb} MB"
                    )
                await asyncio.to_thread(_publish, work / "layer", layer)
            except PackageResolutionFailed as error:
                log.info("packages.build_failed", key=key[:16], reason=error.message,
                         requirements=list(requirements.requirements))
                raise
            finally:
                await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)
        self._record(key, size)
        log.info("packages.built", key=key[:16], requirements=list(requirements.requirements),
                 mb=round(size / 2**20, 1), ms=round((time.monotonic() - started) * 1000))
        await self._evict(keep=key)
        return str(layer)

    def pip_argv(self, requirements: RequirementSet, target: Path) -> list[str]:
        index: list[str] = []
        if self._settings.pip_no_index:
            index.append("--no-index")
        if self._settings.pip_index_url:
            index.append(f"--index-url={self._settings.pip_index_url}")
        index.extend(f"--find-links={link}" for link in self._settings.find_links())
        platforms = [f"--platform={platform}" for platform in PLATFORMS]
        return [
            *self._pip, "install", "--disable-pip-version-check", "--no-input", "--quiet",
            "--ignore-installed", "--no-warn-conflicts", "--only-binary=:all:", "--no-compile",
            "--implementation=cp", f"--python-version={PYTHON_VERSION}", f"--abi={PYTHON_TAG}",
            *platforms, f"--target={target}", *index, "--", *requirements.requirements,
        ]

    async def _run_pip(self, requirements: RequirementSet, work: Path) -> None:
        timeout = self._settings.pip_timeout_s
        process = await asyncio.create_subprocess_exec(
            *self.pip_argv(requirements, work / "layer"),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=_pip_environment(work / "tmp"),
            start_new_session=True,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            raise PackageResolutionFailed(
                f"installing the packages timed out after {timeout:g} s"
            ) from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if process.returncode != 0:
            raise PackageResolutionFailed(
                "the packages could not be installed (wheels only): " + _reason(output)
            )

    async def _check_pip(self) -> str:
        try:
            process = await asyncio.create_subprocess_exec(
                *self._pip, "--version", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                env=_pip_environment(None),
            )
        except OSError as error:
            return f"pip ({self._pip[0]}) cannot start: {error.strerror}"
        try:
            code = await asyncio.wait_for(process.wait(), PIP_VERSION_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            return "pip did not answer --version"
        return "" if code == 0 else f"pip ({' '.join(self._pip)}) is not usable"

    def _prepare(self) -> None:
        self._prepare_folders()
        for leftover in self._root.glob(".building-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self._root.glob(".evicting-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _prepare_folders(self) -> None:
        self._used.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _touch(self, key: str) -> None:
        record = self._used / key
        try:
            os.utime(record)
        except FileNotFoundError:
            self._prepare_folders()
            record.touch()

    def _record(self, key: str, size: int) -> None:
        (self._used / key).write_text(str(size))

    async def _evict(self, keep: str) -> None:
        """Remove least recently used layers while all of them take more than the cache
        allows. Renamed away in the event loop (so `layer_for` never hands out a layer being
        removed), then deleted in a thread."""
        in_use = {Path(path).name for path in await self._in_use()} if self._in_use else set()
        layers = await asyncio.to_thread(self._layers)
        total = sum(size for _, size, _ in layers)
        limit = self._settings.package_cache_mb * 1024 * 1024
        protected = {keep, *in_use, *self._builds}
        now = time.time()
        doomed: list[Path] = []
        for key, size, used_at in sorted(layers, key=lambda layer: layer[2]):
            if total <= limit:
                break
            if key in protected or now - self._used_at(key, used_at) < RECENT_USE_S:
                continue
            target = self._root / f".evicting-{key}-{secrets.token_hex(4)}"
            (self._root / key).rename(target)
            (self._used / key).unlink(missing_ok=True)
            doomed.append(target)
            total -= size
            log.info("packages.evicted", key=key[:16], mb=round(size / 2**20, 1))
        for target in doomed:
            await asyncio.to_thread(shutil.rmtree, target, ignore_errors=True)

    def _used_at(self, key: str, default: float) -> float:
        try:
            return (self._used / key).stat().st_mtime
        except FileNotFoundError:
            return default

    def _layers(self) -> list[tuple[str, int, float]]:
        """(key, size in bytes, last used) of every complete layer."""
        found = []
        for entry in self._root.iterdir():
            if not (_KEY.fullmatch(entry.name) and entry.is_dir()):
                continue
            record = self._used / entry.name
            try:
                size = int(record.read_text())
                used_at = record.stat().st_mtime
            except (OSError, ValueError):
                size, used_at = _size(entry), entry.stat().st_mtime
                self._record(entry.name, size)
            found.append((entry.name, size, used_at))
        return found


def _pip_environment(tmp: Path | None) -> dict[str, str]:
    env = {
        name: value for name, value in os.environ.items()
        if not name.startswith(("PIP_", "PYTHON")) or name in _PIP_REACH
    }
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore")
    if tmp is not None:
        env["TMPDIR"] = str(tmp)  # next to the cache: pip's final move is then a rename
    return env


def _reason(output: bytes) -> str:
    """pip's own words: its ERROR lines, else its last lines, trimmed from the front."""
    lines = [line.strip() for line in output.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("ERROR:")]
    text = "\n".join((errors or lines)[-MESSAGE_LINES:]) or "pip failed without a message"
    return text if len(text) <= MESSAGE_CHARS else "..." + text[-MESSAGE_CHARS:]


def _finish(layer: Path) -> int:
    """Drop console scripts (they point at the host's interpreter), make everything readable
    by the sandbox's user, and return the size in bytes."""
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
            size += info.st_size
        size += len(subfolders) * 4096
    return size


def _size(folder: Path) -> int:
    return sum(os.lstat(os.path.join(base, name)).st_size
               for base, _, files in os.walk(folder) for name in files)


def _publish(built: Path, layer: Path) -> None:
    try:
        built.rename(layer)
    except OSError:
        if not layer.is_dir():  # otherwise another process published the same set first
            raise
