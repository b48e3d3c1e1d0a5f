"""The image tier: the Dockerfile built by `make image` and run with podman, probed over
HTTP on 127.0.0.1. The first run builds the image (minutes); later runs with the same inputs
find it in podman's store. Skipped without root or podman, unless CI=true or
SANDBOX_REQUIRE_RUNSC=1, where that is a failure instead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from image.support import Build, Container, build_image, host_folder, require_image_tools, running

if TYPE_CHECKING:
    from _pytest.terminal import TerminalReporter

BUILD = pytest.StashKey[Build]()


@pytest.fixture(scope="session")
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    require_image_tools()
    build = build_image(tmp_path_factory.mktemp("image") / "make-image.log")
    request.config.stash[BUILD] = build
    return build.tag


@pytest.fixture
def state() -> Iterator[Path]:
    with host_folder() as folder:
        yield folder


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    """One container for the module's probes that leave nothing behind in it."""
    with host_folder() as folder, running(image, folder) as started:
        yield started


def pytest_terminal_summary(terminalreporter: TerminalReporter,
                            config: pytest.Config) -> None:
    build = config.stash.get(BUILD, None)
    if build is not None:
        how = "found in the store" if build.cached else "built"
        terminalreporter.write_line(
            f"image: {build.tag}, {build.size_mb} MB, {how} in {build.seconds:.0f} s"
        )
