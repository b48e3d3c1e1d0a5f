"""Packages through HTTP: `packages=`, PEP 723 and the `packages` field of POST /sandboxes,
with an installer that installs nothing but answers as pip would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import providers
from starlette.testclient import TestClient

from e2e.support import fake_runtime_of, fake_settings, local_client
from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.adapters.fake_packages import FakePackageInstaller
from sandbox.containers import Container
from sandbox.entrypoints.app import create_app

PEP723 = b"""# /// script
# dependencies = ["tablib>=3"]
# ///
print("hi")
"""


@pytest.fixture
def installer() -> FakePackageInstaller:
    return FakePackageInstaller(unavailable=["nosuchpackage"])


@pytest.fixture
def served(
    tmp_path: Path, installer: FakePackageInstaller
) -> Iterator[tuple[TestClient, FakeSandboxRuntime]]:
    settings = fake_settings(tmp_path)
    container = Container(settings=settings)
    container.package_installer.override(providers.Object(installer))
    with local_client(create_app(settings, container)) as client:
        yield client, fake_runtime_of(container)


def test_packages_are_mounted_into_the_sandbox_that_runs_the_script(
    served: tuple[TestClient, FakeSandboxRuntime], installer: FakePackageInstaller
) -> None:
    client, runtime = served

    response = client.post("/execute?language=python&packages=Tablib,six==1.16.0",
                           content=b'print("hi")')

    assert response.status_code == 200
    assert response.json()["stdout"] == "hi\n"
    assert [list(wanted.requirements) for wanted in installer.installed] == [
        ["six==1.16.0", "tablib"]
    ]
    spec, _ = runtime.runs[-1]
    assert len(spec.package_dirs) == 1


def test_a_pep_723_block_is_honoured_without_a_query_parameter(
    served: tuple[TestClient, FakeSandboxRuntime], installer: FakePackageInstaller
) -> None:
    client, runtime = served

    response = client.post("/execute?language=python", content=PEP723)

    assert response.status_code == 200
    assert [list(wanted.requirements) for wanted in installer.installed] == [["tablib>=3"]]
    assert runtime.runs[-1][0].package_dirs


def test_a_script_without_packages_gets_no_layer(
    served: tuple[TestClient, FakeSandboxRuntime], installer: FakePackageInstaller
) -> None:
    client, runtime = served

    client.post("/execute?language=python", content=b'print("hi")')

    assert installer.installed == []
    assert runtime.runs[-1][0].package_dirs == ()


def test_a_package_pip_cannot_find_is_a_422_with_pips_reason_and_runs_nothing(
    served: tuple[TestClient, FakeSandboxRuntime],
) -> None:
    client, runtime = served

    response = client.post("/execute?language=python&packages=nosuchpackage",
                           content=b'print("hi")')

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "package_resolution_failed"
    assert "No matching distribution" in response.json()["error"]["message"]
    assert runtime.runs == []


@pytest.mark.parametrize("hostile", [
    "https://example.invalid/x.whl",
    "x @ https://example.invalid/x.whl",
    "../x",
    "/tmp/x",
    "--index-url=http://127.0.0.1:1/",
    "-e .",
    'x; os_name=="posix"',
])
def test_hostile_requirements_are_a_400_before_any_install(
    served: tuple[TestClient, FakeSandboxRuntime], installer: FakePackageInstaller,
    hostile: str,
) -> None:
    client, runtime = served

    response = client.post("/execute", params={"language": "python", "packages": hostile},
                           content=b'print("hi")')

    assert response.status_code == 400
    assert installer.installed == []
    assert runtime.runs == []


def test_packages_for_bash_are_a_400(served: tuple[TestClient, FakeSandboxRuntime]) -> None:
    client, _ = served

    response = client.post("/execute?language=bash&packages=six", content=b"echo hi")

    assert response.status_code == 400
    assert "Python" in response.json()["error"]["message"]


def test_a_detached_script_keeps_its_packages_in_its_record(
    served: tuple[TestClient, FakeSandboxRuntime], installer: FakePackageInstaller
) -> None:
    client, _ = served

    response = client.post("/execute?language=python&detach=true&packages=six",
                           content=b'print("hi")')

    assert response.status_code == 202
    assert [list(wanted.requirements) for wanted in installer.installed] == [["six"]]


def test_a_long_lived_sandbox_installs_its_packages_when_created(
    served: tuple[TestClient, FakeSandboxRuntime], installer: FakePackageInstaller
) -> None:
    client, _ = served

    response = client.post("/sandboxes", json={"language": "python", "packages": ["six"]})

    assert response.status_code == 201
    assert [list(wanted.requirements) for wanted in installer.installed] == [["six"]]


def test_a_long_lived_sandbox_with_packages_it_cannot_get_is_not_created(
    served: tuple[TestClient, FakeSandboxRuntime],
) -> None:
    client, _ = served

    response = client.post("/sandboxes", json={"packages": ["nosuchpackage"]})

    assert response.status_code == 422
    assert client.get("/sandboxes").json()["sandboxes"] == []


def test_a_dependency_the_server_denies_is_a_422_naming_it_and_runs_nothing(
    tmp_path: Path,
) -> None:
    settings = fake_settings(tmp_path, packages_deny="pysocks")
    container = Container(settings=settings)
    installer = FakePackageInstaller(dependencies={"requests": ["PySocks"]},
                                     policy=settings.package_policy())
    container.package_installer.override(providers.Object(installer))

    with local_client(create_app(settings, container)) as client:
        response = client.post("/execute?language=python&packages=requests",
                               content=b'print("hi")')

    assert response.status_code == 422
    assert "'pysocks' is not allowed on this server" in response.json()["error"]["message"]
    assert fake_runtime_of(container).runs == []

