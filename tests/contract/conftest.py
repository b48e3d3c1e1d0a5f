"""The runtimes the contract suite holds to the same behaviour: the fake and real gVisor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from integration.support import leftovers, require_runsc, runtime_settings, started_runtime

from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.domain.ports import SandboxRuntime


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["fake", pytest.param("runsc", marks=pytest.mark.runsc)])
async def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SandboxRuntime]:
    """A ready runtime; afterwards, nothing of any sandbox may be left."""
    if request.param == "fake":
        fake = FakeSandboxRuntime()
        yield fake
        assert fake.live == set()
        return
    require_runsc()
    settings = runtime_settings(tmp_path / "state")
    async with started_runtime(settings) as runsc:
        yield runsc
        assert leftovers(settings) == []
