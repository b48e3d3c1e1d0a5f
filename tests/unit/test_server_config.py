"""How uvicorn serves the app."""

from __future__ import annotations

from starlette.applications import Starlette

from sandbox.entrypoints.server import server_config
from sandbox.settings import Settings


def test_the_server_runs_on_asyncios_own_loop_not_uvloop() -> None:
    """uvloop closes pipe descriptors twice (its issue 763): under load the second close hit a
    descriptor of another thread. The sandboxes' pipes are most of what the server reads."""
    config = server_config(Starlette(), Settings(runtime="fake"))

    assert config.loop == "asyncio"
