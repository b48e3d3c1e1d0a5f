"""Running pip for the package installer: the command lines (resolve, then install exact
pins), its environment, and the limits it runs under.

pip runs on the host but never runs package code: it is told the sandbox's interpreter and
platforms and `--only-binary=:all:`, so it only unpacks wheels. While it runs, what its build
folder holds (the layer, pip's temporary files and its cache) is measured, and pip's whole
process group is killed as soon as that passes the layer limit: a huge or zip-bomb wheel
stops there instead of filling the disk. RLIMIT_FSIZE stops a single oversized file at once,
and RLIMIT_DATA holds pip to the memory the build reserved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from sandbox.domain.errors import PackageResolutionFailed
from sandbox.domain.packages import RequirementSet, ResolvedSet
from sandbox.settings import Settings

PYTHON_VERSION = "3.11"
PYTHON_TAG = "cp311"
# The rootfs is Debian bookworm (glibc 2.36) on x86_64. pip does not widen a manylinux_2_X
# tag to older glibcs, so every compatible one is named, newest first as pip ranks them.
# linux_x86_64 wheels are built for one machine only and are never taken.
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
)
# `install --dry-run --report` came with pip 22.2.
MIN_PIP_VERSION = Version("22.2")
PIP_VERSION_TIMEOUT_S = 30.0
MESSAGE_CHARS = 1000
MESSAGE_LINES = 5
# The size of the build folder is measured at least this often, and the measuring takes at
# most a quarter of the time (a layer of many thousand files takes a while to walk).
MEASURE_EVERY_S = 0.2
MEASURE_SHARE = 0.25
BLOCK = 4096
# The server's own PIP_* variables do not reach pip, except those that say how to reach an
# index (the machine's pip configuration files are read as usual).
_PIP_REACH = frozenset({
    "PIP_CONFIG_FILE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT",
    "PIP_CLIENT_CERT", "PIP_TRUSTED_HOST", "PIP_PROXY", "PIP_TIMEOUT", "PIP_DEFAULT_TIMEOUT",
    "PIP_RETRIES",
})
_PIP_VERSION = re.compile(r"pip (\S+)")


@dataclass(frozen=True)
class BuildFolder:
    """One build's folder, all of it counted against the layer limit: `layer` is pip's
    target, `tmp` its TMPDIR, `cache` its cache (shared by the resolve and the install run,
    so a wheel is downloaded once, and deleted with the folder: pip's cache never outlives
    a build), `report` the resolver's answer."""

    root: Path

    @property
    def layer(self) -> Path:
        return self.root / "layer"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def report(self) -> Path:
        return self.root / "report.json"


class PipCommand:
    """pip as the installer runs it: `pip` is the command that starts it (tests wrap it)."""

    def __init__(self, settings: Settings, pip: Sequence[str]) -> None:
        self._settings = settings
        self.pip = list(pip)

    def resolve_argv(self, requirements: RequirementSet, build: BuildFolder) -> list[str]:
        """Resolves the set (dependencies included) and writes what it would install."""
        return [*self._install(build), "--dry-run", f"--report={build.report}",
                "--", *requirements.requirements]

    def install_argv(self, resolved: ResolvedSet, build: BuildFolder) -> list[str]:
        """Installs exactly the resolved releases, and nothing the resolver did not choose."""
        return [*self._install(build), "--no-deps", "--", *resolved.pins]

    def _install(self, build: BuildFolder) -> list[str]:
        settings = self._settings
        index: list[str] = []
        if settings.pip_no_index:
            index.append("--no-index")
        if settings.pip_index_url:
            index.append(f"--index-url={settings.pip_index_url}")
        index.extend(f"--find-links={link}" for link in settings.find_links())
        platforms = [f"--platform={platform}" for platform in PLATFORMS]
        return [
            *self.pip, "install", "--disable-pip-version-check", "--no-input", "--quiet",
            "--ignore-installed", "--no-warn-conflicts", "--only-binary=:all:", "--no-compile",
            "--implementation=cp", f"--python-version={PYTHON_VERSION}", f"--abi={PYTHON_TAG}",
            *platforms, f"--target={build.layer}", f"--cache-dir={build.cache}", *index,
        ]

    async def run(self, argv: list[str], build: BuildFolder, deadline: float) -> None:
        """Runs pip to its end, or kills its process group: when `deadline` (event loop time)
        passes, or as soon as the build folder takes more than the layer limit."""
        max_bytes = self._settings.max_layer_mb * 1024 * 1024
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=pip_environment(build.tmp),
            start_new_session=True,
        )
        _limit(process.pid, max_bytes, self._settings.pip_memory_mb * 1024 * 1024)
        output = asyncio.ensure_future(process.communicate())
        try:
            async with asyncio.timeout_at(deadline):
                await _watch_size(output, build.root, max_bytes, self._settings.max_layer_mb)
        except TimeoutError:
            raise PackageResolutionFailed(
                f"installing the packages timed out after {self._settings.pip_timeout_s:g} s"
            ) from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            output.cancel()
            await process.wait()
        if process.returncode != 0:
            raise PackageResolutionFailed(self._failure(output.result()[0]))

    def _failure(self, output: bytes) -> str:
        if b"[Errno 27]" in output:  # EFBIG: a file passed RLIMIT_FSIZE
            return _too_large(self._settings.max_layer_mb, "a single file takes")
        return "the packages could not be installed (wheels only): " + _reason(output)

    async def version_problem(self) -> str:
        """Why this pip cannot serve the installer; empty when it can."""
        try:
            process = await asyncio.create_subprocess_exec(
                *self.pip, "--version", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                env=pip_environment(None),
            )
        except OSError as error:
            return f"pip ({self.pip[0]}) cannot start: {error.strerror}"
        try:
            output, _ = await asyncio.wait_for(process.communicate(), PIP_VERSION_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            return "pip did not answer --version"
        if process.returncode != 0:
            return f"pip ({' '.join(self.pip)}) is not usable"
        return _version_problem(output.decode(errors="replace"))


def read_report(path: Path) -> ResolvedSet:
    """The releases pip's resolver chose (`install --dry-run --report`)."""
    try:
        entries = json.loads(path.read_text())["install"]
        releases = []
        for entry in entries:
            name, version = entry["metadata"]["name"], entry["metadata"]["version"]
            if entry.get("is_direct"):
                raise PackageResolutionFailed(
                    f"package {str(name)[:80]!r} would come from a URL (a direct reference), "
                    "which this server does not install"
                )
            releases.append((name, version))
        return ResolvedSet.of(releases)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PackageResolutionFailed(
            f"pip's resolution report cannot be read ({type(error).__name__})"
        ) from None


def _version_problem(answer: str) -> str:
    found = _PIP_VERSION.match(answer)
    try:
        version = Version(found[1]) if found else None
    except InvalidVersion:
        version = None
    if version is None:
        return f"pip's version cannot be told from its answer {answer[:80]!r}"
    if version < MIN_PIP_VERSION:
        return (f"pip {version} is older than {MIN_PIP_VERSION}, which resolving before "
                "installing needs (install --dry-run --report)")
    return ""


def _limit(pid: int, max_file_bytes: int, max_data_bytes: int) -> None:
    """Set at once after the start (before pip has read its arguments): a preexec function
    would run Python between fork and exec, which is unsafe in a threaded server."""
    with contextlib.suppress(ProcessLookupError):
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
        resource.prlimit(pid, resource.RLIMIT_DATA, (max_data_bytes, max_data_bytes))


async def _watch_size(
    running: asyncio.Future[tuple[bytes, bytes]], folder: Path, max_bytes: int, max_mb: int
) -> None:
    """Returns when pip has ended; raises PackageResolutionFailed as soon as `folder` takes
    more than `max_bytes`."""
    every = MEASURE_EVERY_S
    while not running.done():
        await asyncio.wait({running}, timeout=every)
        if running.done():
            return
        started = time.monotonic()
        if await asyncio.to_thread(footprint, folder) > max_bytes:
            raise PackageResolutionFailed(_too_large(max_mb, "the packages take"))
        every = max(MEASURE_EVERY_S, (time.monotonic() - started) / MEASURE_SHARE)


def _too_large(max_mb: int, what: str) -> str:
    return (f"{what} more than the limit of {max_mb} MB for a package layer "
            "(pip was stopped)")


def footprint(folder: Path) -> int:
    """What `folder` takes on disk: every file and folder in whole blocks, at least one each
    (so a wheel of a million empty files counts too). Files may vanish while pip runs."""
    total = 0
    for base, folders, files in os.walk(folder):
        total += len(folders) * BLOCK
        for name in files:
            try:
                total += entry_footprint(os.lstat(os.path.join(base, name)))
            except FileNotFoundError:
                continue
    return total


def entry_footprint(info: os.stat_result) -> int:
    if not stat.S_ISREG(info.st_mode):
        return BLOCK
    return max(BLOCK, -(-info.st_size // BLOCK) * BLOCK)


def pip_environment(tmp: Path | None) -> dict[str, str]:
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
