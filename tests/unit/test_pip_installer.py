"""The pip installer's own logic (building once, failing cleanly, eviction), with a stand-in
pip that writes files instead of installing: no network, no root. The real pip is exercised
in tests/integration/test_packages.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox.adapters.pip_installer import (
    PLATFORMS,
    InUse,
    PipPackageInstaller,
    _pip_environment,
)
from sandbox.domain.errors import PackageResolutionFailed
from sandbox.domain.metrics import LayerResult, NoMetrics
from sandbox.domain.packages import RequirementSet, parse_requirements
from sandbox.settings import Settings, SettingsError

pytestmark = pytest.mark.anyio

# `name==N` installs a package of N KiB; `slow` never ends; `broken` fails as pip does.
FAKE_PIP = '''
import os, pathlib, re, sys, time
log = pathlib.Path(__file__).with_suffix(".log")
with log.open("a") as file:
    file.write(f"{os.getpid()} {' '.join(sys.argv[1:])}\\n")
target = next(arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("--target="))
requirements = sys.argv[sys.argv.index("--") + 1:]
for requirement in requirements:
    name, _, size = re.match(r"([a-z0-9-]+)(==)?([0-9]*)", requirement).groups()
    if name == "slow":
        time.sleep(60)
    if name == "broken":
        print("Collecting broken", flush=True)
        print("ERROR: No matching distribution found for " + requirement, file=sys.stderr)
        sys.exit(1)
    package = pathlib.Path(target, name.replace("-", "_"))
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("VALUE = 1\\n" + "#" * (int(size or 0) * 1024))
    pathlib.Path(target, "bin").mkdir(exist_ok=True)
    pathlib.Path(target, "bin", name).write_text("#!/host/python")
'''


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake_pip(tmp_path: Path) -> Path:
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    return script


def pip_runs(fake_pip: Path) -> list[str]:
    log = fake_pip.with_suffix(".log")
    return log.read_text().splitlines() if log.exists() else []


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return dataclasses.replace(Settings(), state_dir=tmp_path / "state", **overrides)


def make_installer(
    settings: Settings, fake_pip: Path, in_use: InUse | None = None
) -> PipPackageInstaller:
    return PipPackageInstaller(settings, in_use=in_use, pip=(sys.executable, str(fake_pip)))


def reqs(*items: str) -> RequirementSet:
    return parse_requirements(items, 20, None, frozenset())


def cache_entries(settings: Settings) -> list[str]:
    return sorted(entry.name for entry in (settings.state_dir / "packages").iterdir())


def test_pip_is_asked_for_wheels_of_the_sandbox_python_and_nothing_else(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, pip_index_url="https://mirror.invalid/simple",
                             pip_find_links="/srv/wheels,/srv/more", pip_no_index=True)
    installer = PipPackageInstaller(settings)

    argv = installer.pip_argv(reqs("six", "attrs==23.1"), tmp_path / "target")

    assert argv[:4] == [sys.executable, "-I", "-m", "pip"]
    for flag in ("--only-binary=:all:", "--implementation=cp", "--python-version=3.11",
                 "--abi=cp311", "--ignore-installed", "--no-compile", "--no-input",
                 f"--target={tmp_path / 'target'}", "--no-index",
                 "--index-url=https://mirror.invalid/simple",
                 "--find-links=/srv/wheels", "--find-links=/srv/more"):
        assert flag in argv
    assert {f"--platform={platform}" for platform in PLATFORMS} <= set(argv)
    assert "linux_x86_64" not in PLATFORMS
    assert "manylinux_2_36_x86_64" in PLATFORMS and "manylinux2014_x86_64" in PLATFORMS
    assert argv[argv.index("--"):] == ["--", "attrs==23.1", "six"]


def test_pip_gets_no_index_flags_by_default(tmp_path: Path) -> None:
    argv = PipPackageInstaller(make_settings(tmp_path)).pip_argv(reqs("six"), tmp_path)

    assert not [arg for arg in argv if arg.startswith(("--index-url", "--find-links",
                                                       "--no-index", "--extra-index"))]


def test_the_key_depends_on_the_index_settings(tmp_path: Path) -> None:
    default = PipPackageInstaller(make_settings(tmp_path))
    mirrored = PipPackageInstaller(make_settings(tmp_path, pip_index_url="https://m.invalid/"))

    assert default.key(reqs("six")) != mirrored.key(reqs("six"))
    assert default.key(reqs("six")) == PipPackageInstaller(make_settings(tmp_path)).key(
        reqs("six"))


def test_pip_runs_without_the_servers_pip_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_BINARY", ":all:")
    monkeypatch.setenv("PIP_TARGET", "/etc")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.setenv("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")

    env = _pip_environment(Path("/cache/tmp"))

    assert "PIP_NO_BINARY" not in env and "PIP_TARGET" not in env and "PYTHONPATH" not in env
    assert env["PIP_CERT"] == "/etc/ssl/certs/ca-certificates.crt"
    assert env["PIP_NO_INPUT"] == "1"
    assert env["TMPDIR"] == "/cache/tmp"


async def test_a_set_is_built_once_and_then_served_without_pip(
    tmp_path: Path, fake_pip: Path
) -> None:
    installer = make_installer(make_settings(tmp_path), fake_pip)

    first = await installer.layer_for(reqs("alpha==1"))
    second = await installer.layer_for(reqs("Alpha==1"))

    assert first == second
    assert (Path(first) / "alpha/__init__.py").exists()
    assert len(pip_runs(fake_pip)) == 1


async def test_many_requests_for_one_set_at_once_build_it_once(
    tmp_path: Path, fake_pip: Path
) -> None:
    installer = make_installer(make_settings(tmp_path), fake_pip)

    layers = await asyncio.gather(*(installer.layer_for(reqs("alpha==300")) for _ in range(8)))

    assert len(set(layers)) == 1
    assert len(pip_runs(fake_pip)) == 1


async def test_a_waiter_giving_up_does_not_stop_the_build_for_the_others(
    tmp_path: Path, fake_pip: Path
) -> None:
    installer = make_installer(make_settings(tmp_path), fake_pip)
    impatient = asyncio.create_task(installer.layer_for(reqs("alpha==300")))
    patient = asyncio.create_task(installer.layer_for(reqs("alpha==300")))
    await asyncio.sleep(0.05)

    impatient.cancel()
    layer = await patient

    assert (Path(layer) / "alpha/__init__.py").exists()
    assert len(pip_runs(fake_pip)) == 1


async def test_console_scripts_are_dropped_and_files_are_readable_by_everyone(
    tmp_path: Path, fake_pip: Path
) -> None:
    os.umask(0o077)
    try:
        layer = Path(await make_installer(make_settings(tmp_path), fake_pip).layer_for(
            reqs("alpha")))
    finally:
        os.umask(0o022)

    assert not (layer / "bin").exists()
    assert (layer / "alpha/__init__.py").stat().st_mode & 0o777 == 0o644
    assert (layer / "alpha").stat().st_mode & 0o777 == 0o755


async def test_a_failure_carries_pips_reason_and_leaves_nothing_built(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = make_settings(tmp_path)
    installer = make_installer(settings, fake_pip)

    with pytest.raises(PackageResolutionFailed) as failure:
        await installer.layer_for(reqs("broken==9.9"))

    assert "ERROR: No matching distribution found for broken==9.9" in failure.value.message
    assert "Collecting" not in failure.value.message
    assert cache_entries(settings) == [".used"]


async def test_a_failure_is_not_remembered(tmp_path: Path, fake_pip: Path) -> None:
    installer = make_installer(make_settings(tmp_path), fake_pip)

    for _ in range(2):
        with pytest.raises(PackageResolutionFailed):
            await installer.layer_for(reqs("broken"))

    assert len(pip_runs(fake_pip)) == 2


async def test_pip_is_killed_when_it_takes_too_long(tmp_path: Path, fake_pip: Path) -> None:
    settings = make_settings(tmp_path, pip_timeout_s=0.5)
    installer = make_installer(settings, fake_pip)
    started = time.monotonic()

    with pytest.raises(PackageResolutionFailed, match="timed out after 0.5 s"):
        await installer.layer_for(reqs("slow"))

    assert time.monotonic() - started < 10
    pid = int(pip_runs(fake_pip)[0].split()[0])
    assert not Path(f"/proc/{pid}").exists() or "Z" in _process_state(pid)
    assert cache_entries(settings) == [".used"]


def _process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split()[2]


async def test_a_layer_larger_than_allowed_is_refused_and_removed(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = make_settings(tmp_path, max_layer_mb=1)
    installer = make_installer(settings, fake_pip)

    with pytest.raises(PackageResolutionFailed, match="more than the limit of 1 MB"):
        await installer.layer_for(reqs("huge==1500"))

    assert cache_entries(settings) == [".used"]


async def test_start_removes_half_built_layers_left_by_a_crash(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = make_settings(tmp_path)
    leftover = settings.state_dir / "packages" / ".building-abc-1234" / "layer"
    leftover.mkdir(parents=True)

    await make_installer(settings, fake_pip).start()

    assert cache_entries(settings) == [".used"]


def small_cache(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, package_cache_mb=1, max_layer_mb=1)


def _age(layer: str, seconds: float) -> None:
    record = Path(layer).parent / ".used" / Path(layer).name
    then = time.time() - seconds
    os.utime(record, (then, then))


async def test_the_least_recently_used_layers_go_when_the_cache_is_full(
    tmp_path: Path, fake_pip: Path
) -> None:
    installer = make_installer(small_cache(tmp_path), fake_pip)
    oldest = await installer.layer_for(reqs("one==400"))
    older = await installer.layer_for(reqs("two==400"))
    _age(oldest, 3000)
    _age(older, 2000)
    await installer.layer_for(reqs("one==400"))  # used again: now the newest

    newest = await installer.layer_for(reqs("three==400"))

    assert Path(oldest).is_dir()
    assert not Path(older).exists()
    assert Path(newest).is_dir()


async def test_layers_in_use_or_used_recently_are_never_evicted(
    tmp_path: Path, fake_pip: Path
) -> None:
    held: list[str] = []

    async def in_use() -> list[str]:
        return held

    installer = make_installer(small_cache(tmp_path), fake_pip, in_use=in_use)
    kept = await installer.layer_for(reqs("one==400"))
    recent = await installer.layer_for(reqs("two==400"))
    held.append(kept)
    _age(kept, 3000)

    await installer.layer_for(reqs("three==400"))

    assert Path(kept).is_dir()
    assert Path(recent).is_dir()


async def test_readiness_reports_a_pip_that_cannot_run(tmp_path: Path) -> None:
    broken = PipPackageInstaller(make_settings(tmp_path), pip=("/nonexistent/python",))
    working = PipPackageInstaller(make_settings(tmp_path))

    assert "cannot start" in " ".join(await broken.readiness())
    assert await working.readiness() == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SANDBOX_PIP_TIMEOUT_S", "0"),
        ("SANDBOX_MAX_LAYER_MB", "0"),
        ("SANDBOX_PACKAGE_CACHE_MB", "-1"),
        ("SANDBOX_MAX_PACKAGES", "-1"),
        ("SANDBOX_MAX_LAYER_MB", "99999"),
        ("SANDBOX_PIP_INDEX_URL", "--trusted-host=evil"),
        ("SANDBOX_PIP_FIND_LINKS", "/srv/wheels,-e ."),
        ("SANDBOX_PIP_NO_INDEX", "maybe"),
        ("SANDBOX_PACKAGES_DENY", "ok,not a name"),
    ],
)
def test_invalid_package_settings_are_refused(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable.removesuffix("_DENY")):
        Settings.from_env({variable: value})


def test_package_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env({
        "SANDBOX_PIP_NO_INDEX": "true", "SANDBOX_PIP_FIND_LINKS": "/srv/a, /srv/b",
        "SANDBOX_MAX_PACKAGES": "3", "SANDBOX_PACKAGES_DENY": "Evil_Pkg",
    })

    assert settings.pip_no_index is True
    assert settings.find_links() == ["/srv/a", "/srv/b"]
    assert settings.package_policy().max_count == 3
    assert settings.package_policy().deny == frozenset({"evil-pkg"})


async def test_each_request_is_counted_as_built_hit_or_failed(
    tmp_path: Path, fake_pip: Path
) -> None:
    results: list[str] = []

    class Recording(NoMetrics):
        def package_layer_requested(self, result: LayerResult) -> None:
            results.append(result)

    installer = PipPackageInstaller(make_settings(tmp_path), pip=(sys.executable, str(fake_pip)),
                                    metrics=Recording())

    await installer.layer_for(reqs("alpha==1"))
    await installer.layer_for(reqs("alpha==1"))
    with pytest.raises(PackageResolutionFailed):
        await installer.layer_for(reqs("broken"))

    assert results == ["built", "hit", "failed"]
