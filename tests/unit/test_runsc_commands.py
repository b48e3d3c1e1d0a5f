"""Short runsc commands as processes: one whose caller is cancelled is let finish, never
left running behind the service (a leak check would find it, and it may still act)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sandbox.adapters.runsc.cli import Runsc

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_cancelled_short_command_is_waited_for_not_left_running(tmp_path: Path) -> None:
    done = tmp_path / "done"
    slow = tmp_path / "runsc"
    slow.write_text(f"#!/bin/sh\nsleep 0.5\ntouch {done}\n")
    slow.chmod(0o755)
    runsc = Runsc(str(slow), tmp_path / "root", "systrap")

    call = asyncio.create_task(runsc.kill_all("0123456789abcdef01234567"))
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    assert done.exists()
