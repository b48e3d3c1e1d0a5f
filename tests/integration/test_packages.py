"""Packages installed by the real pip (wheels only, from a local folder: no network) and
imported inside real gVisor sandboxes; and the preinstalled set of the rootfs."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import sys
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from handmade_wheel import write_wheel

from sandbox.adapters.pip_installer import PipPackageInstaller
from sandbox.adapters.runsc.runtime import RunscSandboxRuntime
from sandbox.domain.errors import PackageResolutionFailed
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.model import Language, Limits, Outcome, Program, SandboxSpec, Stream
from sandbox.domain.output import OutputCapture
from sandbox.domain.packages import (
    PackagePolicy,
    RequirementSet,
    package_layers,
    parse_requirements,
)
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]

PURE = "sbxtest_pure"
DEPENDENT = "sbxtest_dep"
SDIST_ONLY = "sbxtest_sdist"
MANY_FILES_BOMB = "sbxtest_bomb"
ONE_FILE_BOMB = "sbxtest_bigfile"
DENIED = "sbxtest-denied"
MIB = "0" * 2**20  # one string: a wheel of many such files costs its maker 1 MiB


def write_sdist(folder: Path, name: str, marker: Path) -> None:
    """A source distribution whose setup.py, were it ever run, would leave a marker."""
    root = f"{name}-1.0"
    files = {
        f"{root}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{root}/setup.py": f"open({str(marker)!r}, 'w').write('ran')\n"
                            f"from setuptools import setup\nsetup(name={name!r}, version='1.0')\n",
    }
    with tarfile.open(folder / f"{root}.tar.gz", "w:gz") as archive:
        for path, text in files.items():
            data = text.encode()
            entry = tarfile.TarInfo(path)
            entry.size = len(data)
            archive.addfile(entry, io.BytesIO(data))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "sdist-setup-ran"


@pytest.fixture
def wheels(tmp_path: Path, marker: Path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    write_wheel(folder, PURE, {f"{PURE}/__init__.py": 'VALUE = "pure 1.0"\n'})
    dependent = f'from {PURE} import VALUE as BASE\nVALUE = "dep on " + BASE\n'
    write_wheel(folder, DEPENDENT, {f"{DEPENDENT}/__init__.py": dependent},
                requires=(f"{PURE.replace('_', '-')}==1.0",))
    write_wheel(folder, "sbxtest_denied", {"sbxtest_denied/__init__.py": ""})
    write_wheel(folder, "sbxtest_needs_denied", {"sbxtest_needs_denied/__init__.py": ""},
                requires=(DENIED,))
    write_sdist(folder, SDIST_ONLY, marker)
    return folder


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of a few hundred KB, unpacking to 512 MiB in 1 MiB files, and to one 64 MiB
    file (made once: they take seconds to compress)."""
    folder = tmp_path_factory.mktemp("bombs")
    write_wheel(folder, MANY_FILES_BOMB,
                {f"{MANY_FILES_BOMB}/part{index}.txt": MIB for index in range(512)},
                compressed=True)
    write_wheel(folder, ONE_FILE_BOMB, {f"{ONE_FILE_BOMB}/big.txt": MIB * 64}, compressed=True)
    return folder


@pytest.fixture
def pip_log(tmp_path: Path) -> Path:
    return tmp_path / "pip-runs.log"


@pytest.fixture
async def installer(
    settings: Settings, wheels: Path, bombs: Path, pip_log: Path, tmp_path: Path
) -> AsyncIterator[PipPackageInstaller]:
    """The real pip, from the local folder only, behind a wrapper that logs each run."""
    pip = tmp_path / "pip"
    pip.write_text(f'#!/bin/sh\necho "$$ $*" >>{pip_log}\nexec {sys.executable} -I -m pip "$@"\n')
    pip.chmod(0o755)
    local = dataclasses.replace(settings, pip_find_links=f"{wheels},{bombs}", pip_no_index=True,
                                max_layer_mb=8, packages_deny=DENIED)
    started = PipPackageInstaller(local, pip=(str(pip),))
    await started.start()
    yield started
    await started.close()


def pip_runs(pip_log: Path, kind: str) -> int:
    """How many times pip was asked to resolve (`--dry-run`) or to install (`--no-deps`)."""
    lines = pip_log.read_text().splitlines() if pip_log.exists() else []
    return sum(" install " in line and f" {kind} " in line for line in lines)


def reqs(*items: str) -> RequirementSet:
    return parse_requirements(items, 20, None, frozenset())


def cache_entries(settings: Settings) -> list[str]:
    return sorted(entry.name for entry in (settings.state_dir / "packages").iterdir())


EMPTY_CACHE = [".aliases", ".pins", ".used"]


async def run_python(
    runtime: RunscSandboxRuntime, source: str, layers: tuple[str, ...], limits: Limits
) -> tuple[Outcome, str, str]:
    capture = OutputCapture(limits.output_bytes)
    spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=limits, package_dirs=layers)
    outcome = await runtime.run(spec, Program.script(Language.PYTHON, source.encode()), capture)
    await capture.close()
    return outcome, capture.captured(Stream.STDOUT).text, capture.captured(Stream.STDERR).text


IMPORT_BOTH = f"""\
import os, {DEPENDENT}, {PURE}
print({DEPENDENT}.VALUE)
print({PURE}.__file__)
try:
    open(os.path.join(os.path.dirname({PURE}.__file__), "planted.py"), "w")
except OSError as error:
    print("read-only:", error.strerror)
"""


async def test_an_installed_package_and_its_dependency_import_inside_a_sandbox(
    runtime: RunscSandboxRuntime, installer: PipPackageInstaller, limits: Limits
) -> None:
    layer = await installer.layer_for(reqs("sbxtest-dep"))

    outcome, stdout, stderr = await run_python(runtime, IMPORT_BOTH, (layer,), limits)

    assert (outcome.exit_code, stderr) == (0, "")
    lines = stdout.splitlines()
    assert lines[0] == "dep on pure 1.0"
    assert lines[1] == f"/sandbox/packages/0/{PURE}/__init__.py"
    assert lines[2].startswith("read-only:")
    assert not (Path(layer) / PURE / "planted.py").exists()


async def test_a_built_set_is_served_again_without_running_pip(
    installer: PipPackageInstaller, pip_log: Path
) -> None:
    first = await installer.layer_for(reqs("sbxtest-pure==1.0"))
    inode = os.stat(first).st_ino

    again = await installer.layer_for(reqs("SBXTEST_pure == 1.0"))

    assert again == first
    assert os.stat(again).st_ino == inode
    assert (pip_runs(pip_log, "--dry-run"), pip_runs(pip_log, "--no-deps")) == (1, 1)


async def test_concurrent_requests_for_one_set_build_it_once(
    installer: PipPackageInstaller, pip_log: Path
) -> None:
    layers = await asyncio.gather(*(installer.layer_for(reqs("sbxtest-dep")) for _ in range(6)))

    assert len(set(layers)) == 1
    assert (pip_runs(pip_log, "--dry-run"), pip_runs(pip_log, "--no-deps")) == (1, 1)
    assert (Path(layers[0]) / DEPENDENT / "__init__.py").exists()


async def test_spellings_that_resolve_alike_share_one_layer_of_exactly_the_resolved_releases(
    installer: PipPackageInstaller, pip_log: Path
) -> None:
    one = await installer.layer_for(reqs("sbxtest-dep!=0.0.1"))
    other = await installer.layer_for(reqs("SBXTEST_dep!=0.0.2"))

    assert one == other
    assert (pip_runs(pip_log, "--dry-run"), pip_runs(pip_log, "--no-deps")) == (2, 1)
    (install,) = [line for line in pip_log.read_text().splitlines() if "--no-deps" in line]
    assert install.endswith("-- sbxtest-dep==1.0 sbxtest-pure==1.0")
    assert sorted(path.name for path in Path(one).iterdir()) == [
        DEPENDENT, f"{DEPENDENT}-1.0.dist-info", PURE, f"{PURE}-1.0.dist-info"]


async def test_a_dependency_the_server_denies_is_refused_before_anything_is_installed(
    installer: PipPackageInstaller, pip_log: Path, settings: Settings
) -> None:
    with pytest.raises(PackageResolutionFailed, match=f"'{DENIED}' is not allowed"):
        await installer.layer_for(reqs("sbxtest-needs-denied"))

    assert (pip_runs(pip_log, "--dry-run"), pip_runs(pip_log, "--no-deps")) == (1, 0)
    assert cache_entries(settings) == EMPTY_CACHE


async def test_a_zip_bomb_of_many_files_is_stopped_at_the_layer_limit(
    installer: PipPackageInstaller, settings: Settings
) -> None:
    with pytest.raises(PackageResolutionFailed) as failure:
        await installer.layer_for(reqs(MANY_FILES_BOMB))

    assert failure.value.message == ("the packages take more than the limit of 8 MB for a "
                                     "package layer (pip was stopped)")
    assert cache_entries(settings) == EMPTY_CACHE


async def test_a_zip_bomb_of_one_huge_file_is_stopped_at_the_layer_limit(
    installer: PipPackageInstaller, settings: Settings
) -> None:
    with pytest.raises(PackageResolutionFailed) as failure:
        await installer.layer_for(reqs(ONE_FILE_BOMB))

    assert failure.value.message == ("a single file takes more than the limit of 8 MB for a "
                                     "package layer (pip was stopped)")
    assert cache_entries(settings) == EMPTY_CACHE


PEP723_SCRIPT = f"""\
# /// script
# requires-python = ">=3.11"
# dependencies = ["sbxtest-dep"]
# ///
import {DEPENDENT}
print({DEPENDENT}.VALUE)
"""


async def test_a_pep723_scripts_dependencies_are_installed_and_importable(
    runtime: RunscSandboxRuntime, installer: PipPackageInstaller, limits: Limits
) -> None:
    layers = await package_layers(
        installer, Language.PYTHON, PEP723_SCRIPT.encode(), [], PackagePolicy()
    )

    outcome, stdout, stderr = await run_python(runtime, PEP723_SCRIPT, layers, limits)

    assert (outcome.exit_code, stdout, stderr) == (0, "dep on pure 1.0\n", "")


async def test_a_version_that_does_not_exist_fails_with_pips_reason_and_leaves_nothing(
    installer: PipPackageInstaller, settings: Settings
) -> None:
    with pytest.raises(PackageResolutionFailed) as failure:
        await installer.layer_for(reqs("sbxtest-pure==9.9"))

    assert "No matching distribution found for sbxtest-pure==9.9" in failure.value.message
    assert len(failure.value.message) <= 1200
    assert cache_entries(settings) == EMPTY_CACHE


async def test_a_package_with_only_an_sdist_is_refused_and_never_built(
    installer: PipPackageInstaller, settings: Settings, marker: Path, wheels: Path
) -> None:
    assert (wheels / f"{SDIST_ONLY}-1.0.tar.gz").exists()

    with pytest.raises(PackageResolutionFailed, match="No matching distribution found"):
        await installer.layer_for(reqs("sbxtest-sdist"))

    assert not marker.exists()
    assert cache_entries(settings) == EMPTY_CACHE


PREINSTALLED = """\
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import requests

frame = pd.DataFrame({"x": np.arange(5), "y": np.arange(5) ** 2})
figure, axes = plt.subplots()
axes.plot(frame["x"], frame["y"])
figure.savefig("/tmp/plot.png")
with open("/tmp/plot.png", "rb") as png:
    print(png.read(8) == b"\\x89PNG\\r\\n\\x1a\\n")
print(int(frame["y"].sum()), matplotlib.get_backend(), requests.__name__)
"""


async def test_the_preinstalled_data_packages_work_inside_a_sandbox(
    runtime: RunscSandboxRuntime, limits: Limits
) -> None:
    outcome, stdout, stderr = await run_python(runtime, PREINSTALLED, (),
                                               dataclasses.replace(limits, timeout_s=120))

    assert (outcome.exit_code, stderr) == (0, "")
    assert stdout == "True\n30 Agg requests\n"


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("SANDBOX_NETWORK_TESTS") != "1",
                    reason="reaches the package index; set SANDBOX_NETWORK_TESTS=1")
async def test_a_package_from_the_default_index_imports_inside_a_sandbox(
    runtime: RunscSandboxRuntime, settings: Settings, limits: Limits
) -> None:
    installer = PipPackageInstaller(settings)

    layer = await installer.layer_for(reqs("tomli-w"))
    outcome, stdout, stderr = await run_python(
        runtime, "import tomli_w\nprint(tomli_w.dumps({'a': 1}), end='')\n", (layer,), limits
    )

    assert (outcome.exit_code, stdout, stderr) == (0, "a = 1\n", "")
