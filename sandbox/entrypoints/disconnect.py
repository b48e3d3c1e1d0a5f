"""Work that nobody waits for any more is ended: a client that hangs up before its answer
cancels the work (the runtime then ends the sandbox or the exec at once, not at its timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from starlette.requests import ClientDisconnect
from starlette.types import Receive

log = structlog.get_logger(__name__)

T = TypeVar("T")


async def unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T:
    """Awaits `work`; if the client disconnects first, `work` is cancelled (its clean-up runs
    in full) and ClientDisconnect is raised. Only once the request body has been read: from
    then on the only message `receive` gives is the disconnect.

    The work runs in the caller's own task (only the watch is a task of its own), so what it
    binds to the log context stays bound for the request's last log line."""
    current = asyncio.current_task()
    assert current is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        left = True
        current.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise
        current.uncancel()  # our own cancellation, answered here: none is left pending
        log.info("http.client_left")
        raise ClientDisconnect() from None
    finally:
        watcher.cancel()
