"""Readiness proven by a real probe sandbox: a runsc that answers `--version` but cannot start
sandboxes (as in a chroot, where it cannot make its namespaces) is not ready, and is ready
again once it can."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import pytest

from integration.support import leftovers, started_runtime
from sandbox.adapters.runsc.probe import RETRY_S
from sandbox.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.runsc]

# runsc, unless the flag file exists: then starting a sandbox fails as it does in a chroot.
WRAPPER = """#!/bin/sh
for arg; do
    case "$arg" in
        run|create|restore)
            if [ -e "{flag}" ]; then
                echo "fork/exec /proc/self/exe: operation not permitted" >&2
                exit 128
            fi;;
    esac
done
exec {runsc} "$@"
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_runsc_that_cannot_start_sandboxes_is_not_ready_until_it_can(
    settings: Settings, tmp_path: Path
) -> None:
    flag = tmp_path / "broken"
    flag.touch()
    wrapper = tmp_path / "runsc"
    wrapper.write_text(WRAPPER.format(flag=flag, runsc=shutil.which(settings.runsc_path)))
    wrapper.chmod(0o755)
    chrooted = dataclasses.replace(settings, runsc_path=str(wrapper))

    async with started_runtime(chrooted) as runtime:
        broken = await runtime.readiness()
        flag.unlink()
        await asyncio.sleep(RETRY_S + 0.5)  # a failed probe is not run again sooner
        mended = await runtime.readiness()

    assert len(broken) == 1 and "probe sandbox" in broken[0]
    assert mended == []
    assert leftovers(chrooted) == []
