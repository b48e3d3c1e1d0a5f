"""A look at a sandbox's state before a request body is read or a stream starts, so that an
unknown or stopped sandbox is a plain 404 or 409: not an upload read in vain, not an error
event after a 200. The service checks again, under the sandbox's lock. A sandbox the service
suspended itself (handed to another instance, saved when a server stopped) passes: the call
restores it."""

from __future__ import annotations

from sandbox.domain.errors import InvalidState
from sandbox.domain.lifecycle.handoff import resumable
from sandbox.domain.lifecycle.reading import get_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import SandboxState


async def require_running(sandboxes: Sandboxes, sandbox_id: str, verb: str) -> None:
    sandbox = await get_sandbox(sandboxes, sandbox_id)
    if sandbox.state is not SandboxState.RUNNING and not resumable(sandbox):
        raise InvalidState(
            f"cannot {verb} a sandbox that is {sandbox.state.value} (it must be running)"
        )
