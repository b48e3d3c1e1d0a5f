"""Which layer holds each limit, said at start-up and in /readyz; without cgroups the weaker
limits are named in a warning, and SANDBOX_REQUIRE_CGROUPS refuses to start so."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.adapters.limit_layers import limit_layers, weakened
from sandbox.adapters.runsc import cgroups
from sandbox.adapters.runsc.runtime import CgroupsRequired, RunscSandboxRuntime
from sandbox.settings import Settings

pytestmark = pytest.mark.anyio


def runtime_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: cgroups.SandboxCgroups,
    **settings: object,
) -> RunscSandboxRuntime:
    """The runsc runtime on a host whose cgroups are `host`, without runsc itself."""
    monkeypatch.setattr(cgroups, "detect", lambda parent, root=None: host)
    return RunscSandboxRuntime(dataclasses.replace(
        Settings.from_env({}), runtime="runsc", state_dir=tmp_path / "state",
        runsc_path=str(tmp_path / "no-runsc"), **settings,
    ))


def test_with_cgroups_every_limit_has_a_kernel_layer_and_cpu_is_held() -> None:
    layers = limit_layers(cgroups=True)

    assert layers["memory"] == ["cgroup"]
    assert layers["cpu"] == ["cgroup"]
    assert layers["pids"] == ["rlimit", "cgroup"]
    assert weakened(layers) == {}


def test_without_cgroups_cpu_is_not_held_and_memory_only_watched() -> None:
    layers = limit_layers(cgroups=False)

    assert weakened(layers) == {"memory": ["memory_watch"], "cpu": [], "pids": ["rlimit"]}


async def test_a_runtime_without_cgroups_warns_which_limits_are_weaker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = runtime_on(tmp_path, monkeypatch, cgroups.NoCgroups("no cgroup tree here"))

    with capture_logs() as logs:
        await runtime.start()

    [ready] = [entry for entry in logs if entry["event"] == "runsc.ready"]
    [warning] = [entry for entry in logs if entry["event"] == "runsc.limits_weakened"]
    assert ready["limits"] == runtime.limit_layers() == limit_layers(cgroups=False)
    assert warning["log_level"] == "warning"
    assert warning["reason"] == "no cgroup tree here"
    assert warning["limits"] == {"memory": ["memory_watch"], "cpu": [], "pids": ["rlimit"]}


async def test_a_runtime_with_cgroups_says_its_limits_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = runtime_on(tmp_path, monkeypatch, cgroups.CgroupsV1("owned", root=tmp_path))

    with capture_logs() as logs:
        await runtime.start()

    assert runtime.limit_layers() == limit_layers(cgroups=True)
    assert [entry for entry in logs if entry["log_level"] == "warning"] == []


async def test_required_cgroups_refuse_a_start_without_them_and_say_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = runtime_on(tmp_path, monkeypatch, cgroups.NoCgroups("no cgroup tree here"),
                         require_cgroups=True)

    with capture_logs() as logs, pytest.raises(CgroupsRequired, match="no cgroup tree here"):
        await runtime.start()

    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == [
        "runsc.cgroups_required"]


async def test_required_cgroups_let_a_host_with_them_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = runtime_on(tmp_path, monkeypatch, cgroups.CgroupsV1("owned", root=tmp_path),
                         require_cgroups=True)

    await runtime.start()

    assert runtime.limit_layers()["cpu"] == ["cgroup"]


def test_require_cgroups_is_read_from_the_environment() -> None:
    assert Settings.from_env({"SANDBOX_REQUIRE_CGROUPS": "true"}).require_cgroups is True
    assert Settings.from_env({}).require_cgroups is False


def test_the_fake_runtime_reports_the_layers_of_the_host_it_pretends_to_be() -> None:
    fake = FakeSandboxRuntime()
    with_cgroups = fake.limit_layers()
    fake.cgroups = False

    assert with_cgroups == limit_layers(cgroups=True)
    assert fake.limit_layers() == limit_layers(cgroups=False)
