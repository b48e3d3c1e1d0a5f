"""The pip installer's own logic: resolving before installing, one layer per resolved set,
aliases, the policy on dependencies, failing cleanly and eviction; with the stand-in pip of
pip_support. Its limits (queue, capacity, size, time) are in test_pip_limits.py."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
from pip_support import (
    EMPTY_CACHE,
    cache_entries,
    make_installer,
    make_settings,
    pip_runs,
    reqs,
    write_fake_pip,
)

from sandbox.adapters.memory_store import InMemorySandboxStore
from sandbox.adapters.pip_installer import PipPackageInstaller
from sandbox.adapters.pip_process import (
    PLATFORMS,
    BuildFolder,
    PipCommand,
    pip_environment,
)
from sandbox.containers import layers_held
from sandbox.domain.errors import PackageResolutionFailed
from sandbox.domain.metrics import LayerResult, NoMetrics
from sandbox.domain.model import Sandbox, SandboxKind, SandboxState
from sandbox.domain.packages import PackagePolicy, ResolvedSet
from sandbox.settings import Settings, SettingsError

DEFAULT_LIMITS = Settings().default_limits()

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake_pip(tmp_path: Path) -> Path:
    return write_fake_pip(tmp_path)


def test_the_resolver_is_asked_for_wheels_of_the_sandbox_python_and_nothing_else(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, pip_index_url="https://mirror.invalid/simple",
                             pip_find_links="/srv/wheels,/srv/more", pip_no_index=True)
    build = BuildFolder(tmp_path / "build")

    argv = PipCommand(settings, ["pip"]).resolve_argv(reqs("six", "attrs==23.1"), build)

    for flag in ("--only-binary=:all:", "--implementation=cp", "--python-version=3.11",
                 "--abi=cp311", "--ignore-installed", "--no-compile", "--no-input",
                 "--dry-run", f"--report={build.root / 'report.json'}",
                 f"--target={build.root / 'layer'}", f"--cache-dir={build.root / 'cache'}",
                 "--no-index", "--index-url=https://mirror.invalid/simple",
                 "--find-links=/srv/wheels", "--find-links=/srv/more"):
        assert flag in argv
    assert {f"--platform={platform}" for platform in PLATFORMS} <= set(argv)
    assert "linux_x86_64" not in PLATFORMS
    assert "manylinux_2_36_x86_64" in PLATFORMS and "manylinux2014_x86_64" in PLATFORMS
    assert "--no-deps" not in argv
    assert argv[argv.index("--"):] == ["--", "attrs==23.1", "six"]


def test_the_install_takes_exactly_the_resolved_releases_without_their_dependencies(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    build = BuildFolder(tmp_path / "build")
    command = PipCommand(settings, ["pip"])

    argv = command.install_argv(ResolvedSet(("child==1", "parent==2")), build)

    assert "--no-deps" in argv and "--dry-run" not in argv
    assert set(command.resolve_argv(reqs("x"), build)) - set(argv) == {
        "--dry-run", f"--report={build.report}", "x"}
    assert argv[argv.index("--"):] == ["--", "child==1", "parent==2"]


def test_pip_gets_no_index_flags_by_default(tmp_path: Path) -> None:
    argv = PipCommand(make_settings(tmp_path), ["pip"]).resolve_argv(
        reqs("six"), BuildFolder(tmp_path))

    assert not [arg for arg in argv if arg.startswith(("--index-url", "--find-links",
                                                       "--no-index", "--extra-index"))]


def test_the_keys_depend_on_the_index_settings(tmp_path: Path) -> None:
    default = PipPackageInstaller(make_settings(tmp_path))
    mirrored = PipPackageInstaller(make_settings(tmp_path, pip_index_url="https://m.invalid/"))
    pins = ResolvedSet(("six==1.16.0",))

    assert default.key(reqs("six")) != mirrored.key(reqs("six"))
    assert default.layer_key(pins) != mirrored.layer_key(pins)
    assert default.key(reqs("six")) == PipPackageInstaller(make_settings(tmp_path)).key(
        reqs("six"))


def test_pip_runs_without_the_servers_pip_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_BINARY", ":all:")
    monkeypatch.setenv("PIP_TARGET", "/etc")
    monkeypatch.setenv("PIP_CACHE_DIR", "/root/.cache/pip")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.setenv("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")

    env = pip_environment(Path("/cache/tmp"))

    for dropped in ("PIP_NO_BINARY", "PIP_TARGET", "PIP_CACHE_DIR", "PYTHONPATH"):
        assert dropped not in env
    assert env["PIP_CERT"] == "/etc/ssl/certs/ca-certificates.crt"
    assert env["PIP_NO_INPUT"] == "1"
    assert env["TMPDIR"] == "/cache/tmp"


async def test_a_set_is_resolved_installed_once_and_then_served_without_pip(
    tmp_path: Path, fake_pip: Path
) -> None:
    installer = make_installer(make_settings(tmp_path), fake_pip)

    first = await installer.layer_for(reqs("alpha==1"))
    second = await installer.layer_for(reqs("Alpha==1"))

    assert first == second
    assert (Path(first) / "alpha/__init__.py").exists()
    assert len(pip_runs(fake_pip, "resolve")) == 1
    assert len(pip_runs(fake_pip, "install")) == 1
    assert len(pip_runs(fake_pip)) == 2


async def test_an_alias_outlives_a_restart(tmp_path: Path, fake_pip: Path) -> None:
    settings = make_settings(tmp_path)
    layer = await make_installer(settings, fake_pip).layer_for(reqs("alpha!=3"))
    restarted = make_installer(settings, fake_pip)
    await restarted.start()

    again = await restarted.layer_for(reqs("alpha!=3"))

    assert again == layer
    assert len(pip_runs(fake_pip, "resolve")) == 1


async def test_spellings_that_resolve_to_the_same_releases_share_one_layer(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = make_settings(tmp_path)
    installer = make_installer(settings, fake_pip)

    layers = {await installer.layer_for(reqs(f"alpha!=0.0.{patch}")) for patch in range(5)}

    assert len(layers) == 1
    assert len(pip_runs(fake_pip, "resolve")) == 5
    assert len(pip_runs(fake_pip, "install")) == 1
    assert len([name for name in cache_entries(settings) if not name.startswith(".")]) == 1


async def test_dependencies_are_pinned_and_installed_exactly_with_no_deps(
    tmp_path: Path, fake_pip: Path
) -> None:
    installer = make_installer(make_settings(tmp_path), fake_pip)

    layer = Path(await installer.layer_for(reqs("parent>=1")))

    (install,) = pip_runs(fake_pip, "install")
    assert install.endswith("--no-deps -- child==1 parent==1")
    assert (layer / "parent").is_dir() and (layer / "child").is_dir()


async def test_a_dependency_the_policy_denies_is_refused_before_anything_is_installed(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = make_settings(tmp_path)
    installer = make_installer(settings, fake_pip, policy=PackagePolicy.from_lists(20,
                                                                                 deny="Bad"))

    with pytest.raises(PackageResolutionFailed, match="'bad' is not allowed on this server"):
        await installer.layer_for(reqs("needs-bad"))

    assert pip_runs(fake_pip, "install") == []
    assert cache_entries(settings) == EMPTY_CACHE


async def test_an_allow_list_holds_for_dependencies_too(tmp_path: Path, fake_pip: Path) -> None:
    installer = make_installer(make_settings(tmp_path), fake_pip,
                               policy=PackagePolicy.from_lists(20, allow="parent"))

    with pytest.raises(PackageResolutionFailed, match="'child'"):
        await installer.layer_for(reqs("parent"))


async def test_a_cached_set_is_refused_when_the_policy_now_denies_one_of_its_packages(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = make_settings(tmp_path)
    await make_installer(settings, fake_pip).layer_for(reqs("parent"))
    stricter = make_installer(settings, fake_pip, policy=PackagePolicy.from_lists(20,
                                                                                deny="child"))

    with pytest.raises(PackageResolutionFailed, match="'child'"):
        await stricter.layer_for(reqs("parent"))

    assert len(pip_runs(fake_pip)) == 2  # the first build only


async def test_a_dependency_from_a_url_is_refused(tmp_path: Path, fake_pip: Path) -> None:
    installer = make_installer(make_settings(tmp_path), fake_pip)

    with pytest.raises(PackageResolutionFailed, match="'direct' would come from a URL"):
        await installer.layer_for(reqs("needs-direct"))

    assert pip_runs(fake_pip, "install") == []


async def test_many_requests_for_one_set_at_once_build_it_once(
    tmp_path: Path, fake_pip: Path
) -> None:
    installer = make_installer(make_settings(tmp_path), fake_pip)

    layers = await asyncio.gather(*(installer.layer_for(reqs("alpha==300")) for _ in range(8)))

    assert len(set(layers)) == 1
    assert len(pip_runs(fake_pip)) == 2


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
    assert len(pip_runs(fake_pip)) == 2


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

    assert "ERROR: No matching distribution found for broken" in failure.value.message
    assert "Collecting" not in failure.value.message
    assert cache_entries(settings) == EMPTY_CACHE


async def test_a_failure_is_not_remembered(tmp_path: Path, fake_pip: Path) -> None:
    installer = make_installer(make_settings(tmp_path), fake_pip)

    for _ in range(2):
        with pytest.raises(PackageResolutionFailed):
            await installer.layer_for(reqs("broken"))

    assert len(pip_runs(fake_pip)) == 2


async def test_start_removes_what_a_crash_left_half_built_or_half_written(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = make_settings(tmp_path)
    packages = settings.state_dir / "packages"
    (packages / ".building-abc-1234" / "layer").mkdir(parents=True)
    (packages / ".aliases").mkdir()
    (packages / ".aliases" / ".0123.abcd").write_text("{")

    await make_installer(settings, fake_pip).start()

    assert cache_entries(settings) == EMPTY_CACHE
    assert list((packages / ".aliases").iterdir()) == []


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


async def test_an_evicted_layers_alias_goes_with_it_and_the_set_is_built_again(
    tmp_path: Path, fake_pip: Path
) -> None:
    settings = small_cache(tmp_path)
    installer = make_installer(settings, fake_pip)
    evicted = await installer.layer_for(reqs("two==400"))
    _age(evicted, 3000)
    await installer.layer_for(reqs("one==400"))
    await installer.layer_for(reqs("three==400"))
    aliases = settings.state_dir / "packages" / ".aliases"

    assert not Path(evicted).exists()
    assert len(list(aliases.iterdir())) == 2
    assert await installer.layer_for(reqs("two==400")) == evicted
    assert len(pip_runs(fake_pip, "install")) == 4


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


def record(state: SandboxState, layer: str) -> Sandbox:
    return Sandbox(sandbox_id=f"{state.value:0<24}"[:24], kind=SandboxKind.SESSION, state=state,
                   language=None, limits=DEFAULT_LIMITS, created_at=0.0, updated_at=0.0,
                   package_dirs=(layer,))


async def test_only_sandboxes_that_can_still_run_hold_their_layers() -> None:
    store = InMemorySandboxStore()
    for state in SandboxState:
        await store.add(record(state, f"/layers/{state.value}"))

    held = await layers_held(store)

    assert sorted(held) == ["/layers/creating", "/layers/running", "/layers/suspended"]


async def test_readiness_reports_a_pip_that_cannot_run_or_is_too_old(
    tmp_path: Path, fake_pip: Path
) -> None:
    broken = PipPackageInstaller(make_settings(tmp_path), pip=("/nonexistent/python",))
    fake_pip.with_suffix(".version").write_text("pip 22.1.2 from /old (python 3.11)")
    old = make_installer(make_settings(tmp_path), fake_pip)
    working = PipPackageInstaller(make_settings(tmp_path))

    assert "cannot start" in " ".join(await broken.readiness())
    assert await old.readiness() == [
        "pip 22.1.2 is older than 22.2, which resolving before installing needs "
        "(install --dry-run --report)"
    ]
    assert await working.readiness() == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SANDBOX_PIP_TIMEOUT_S", "0"),
        ("SANDBOX_MAX_LAYER_MB", "0"),
        ("SANDBOX_PACKAGE_CACHE_MB", "-1"),
        ("SANDBOX_MAX_PACKAGES", "-1"),
        ("SANDBOX_MAX_LAYER_MB", "99999"),
        ("SANDBOX_MAX_QUEUED_BUILDS", "-1"),
        ("SANDBOX_PIP_MEMORY_MB", "0"),
        ("SANDBOX_PIP_MEMORY_MB", str(10**9)),
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
        "SANDBOX_MAX_QUEUED_BUILDS": "0", "SANDBOX_PIP_MEMORY_MB": "256",
    })

    assert settings.pip_no_index is True
    assert settings.find_links() == ["/srv/a", "/srv/b"]
    assert settings.package_policy().max_count == 3
    assert settings.package_policy().deny == frozenset({"evil-pkg"})
    assert (settings.max_queued_builds, settings.pip_memory_mb) == (0, 256)


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
