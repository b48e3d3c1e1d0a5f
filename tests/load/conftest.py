"""The load tier: a real server (`python -m sandbox` on real gVisor) under many clients at once,
on loopback, bounded in count and time. Skipped where runsc cannot run, unless CI=true or
SANDBOX_REQUIRE_RUNSC=1, where that is a failure instead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.server import destroy_leftovers
from integration.support import require_runsc, runtime_settings

from sandbox.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    require_runsc()
    return runtime_settings(tmp_path / "state")


@pytest.fixture(autouse=True)
def cleaned_up(settings: Settings) -> Iterator[None]:
    yield
    destroy_leftovers(settings)
