"""A call that needs a sandbox's processes (an exec, a file call, a suspend) is served by the
instance that runs it, whichever instance it reached.

`ensure_here` brings the sandbox to this instance: one suspended by the service (handed off,
or saved when a server stopped) is restored here, the lease first; one running elsewhere is
asked for: a handoff request row is recorded (one per sandbox, so concurrent callers agree)
and its owner signalled; the owner checkpoints it to the image store, records it suspended
(`handed_off`), releases its lease and signals back; then the caller restores it here. Of
callers on several instances, the one whose acquire wins restores it; the others see a new
owner and ask again. Each wait is bounded by `handoff_timeout_s`, then `Unavailable` (503).

The owner's side (`serve_handoffs`) answers on signals and, since signals may be lost, by
polling the pending requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog

from sandbox.domain.errors import InvalidState, RuntimeFailure, StoreUnavailable, Unavailable
from sandbox.domain.lifecycle import channels
from sandbox.domain.lifecycle.leases import end_if_deleted, settle_ownerless
from sandbox.domain.lifecycle.restoration import restore_locked
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_locked
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.domain.ports import HandoffState, Signal
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)

# Suspended by the service, not by its user: the next call that needs it restores it.
RESUMABLE = frozenset({ReasonCode.HANDED_OFF, ReasonCode.SERVER_STOPPED,
                       ReasonCode.SERVER_RESTARTED})
# How often a waiting caller looks again without a signal, and how often an owner polls the
# pending requests.
POLL_S = 0.5


def resumable(sandbox: Sandbox) -> bool:
    return sandbox.state is SandboxState.SUSPENDED and sandbox.reason_code in RESUMABLE


def deadline_for(sandboxes: Sandboxes) -> float:
    return asyncio.get_running_loop().time() + sandboxes.policy.handoff_timeout_s


async def ensure_here(sandboxes: Sandboxes, sandbox_id: str, deadline: float,
                      restore: bool = True) -> None:
    """Return once the sandbox runs here, or (restore=False) once it runs nowhere; or as soon
    as it is in a state the caller's own checks refuse (unknown, exited, suspended by its
    user). Unavailable past the deadline or when this instance stops."""
    while not sandboxes.ownership.holds(sandbox_id):
        sandbox = await sandboxes.get(sandbox_id)
        if resumable(sandbox):
            if not restore:
                return
            if not await _restore_here(sandboxes, sandbox_id):
                await _wait(sandboxes, sandbox_id, deadline)  # another instance restores it
            continue
        if sandbox.state is SandboxState.RUNNING:
            if not await _ask_owner(sandboxes, sandbox_id):
                continue  # it had no live owner: recorded lost, or restored here
        elif sandbox.state is not SandboxState.CREATING:
            return
        await _wait(sandboxes, sandbox_id, deadline)


async def _restore_here(sandboxes: Sandboxes, sandbox_id: str) -> bool:
    """False when another instance won the lease (or restored it meanwhile)."""
    async with sandboxes.lock(sandbox_id):
        sandbox = await sandboxes.get(sandbox_id)
        if not resumable(sandbox):
            return sandboxes.ownership.holds(sandbox_id)
        try:
            await restore_locked(sandboxes, sandbox)
        except InvalidState:
            return False
        return True


async def _ask_owner(sandboxes: Sandboxes, sandbox_id: str) -> bool:
    """Ask the owner of a running sandbox to let go; False when it has no live owner (it is
    settled now)."""
    lease = await sandboxes.ownership.leases.current(sandbox_id)
    if lease is None or lease.owner == sandboxes.instance_id:
        # Expired, or a lease of ours we gave up (its container ended): nobody runs it.
        await settle_ownerless(sandboxes, sandbox_id)
        return False
    request = await sandboxes.handoffs.request(sandbox_id, sandboxes.instance_id)
    if request.state is HandoffState.RELEASED and request.requester == sandboxes.instance_id:
        # Ours was answered, but another instance restored it first: ask anew.
        await sandboxes.handoffs.remove(sandbox_id, sandboxes.instance_id)
        request = await sandboxes.handoffs.request(sandbox_id, sandboxes.instance_id)
    await sandboxes.signals.publish(channels.HANDOFF, sandbox_id)
    log.info("handoff.requested", sandbox_id=sandbox_id, owner=lease.owner,
             requester=request.requester)
    return True


async def _wait(sandboxes: Sandboxes, sandbox_id: str, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    if sandboxes.stopping:
        raise Unavailable("this server instance is stopping; retry the call")
    left = deadline - loop.time()
    if left <= 0:
        raise Unavailable(f"sandbox {sandbox_id} runs on another server instance, which did "
                          "not hand it over in time; retry the call")
    woken = sandboxes.handed_over.setdefault(sandbox_id, asyncio.Event())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(min(left, POLL_S)):
            await woken.wait()


def wake(sandboxes: Sandboxes, sandbox_id: str) -> None:
    woken = sandboxes.handed_over.pop(sandbox_id, None)
    if woken is not None:
        woken.set()


# The owner's side -----------------------------------------------------------------------

async def hand_off(sandboxes: Sandboxes, sandbox_id: str) -> None:
    """Answer the sandbox's pending handoff request, if it runs here and is not at work (a
    call at work is let finish: its end looks again)."""
    request = await sandboxes.handoffs.get(sandbox_id)
    if (request is None or request.state is not HandoffState.REQUESTED
            or request.requester == sandboxes.instance_id):
        return
    async with sandboxes.lock(sandbox_id):
        if not sandboxes.ownership.holds(sandbox_id):
            return
        if sandboxes.busy[sandbox_id]:
            sandboxes.wanted.add(sandbox_id)
            return
        sandboxes.wanted.discard(sandbox_id)
        sandbox = await sandboxes.store.get(sandbox_id)
        if sandbox is None or sandbox.state is not SandboxState.RUNNING:
            return
        try:
            await suspend_locked(sandboxes, sandbox, Reason.of(ReasonCode.HANDED_OFF))
        except RuntimeFailure:
            log.warning("handoff.failed", sandbox_id=sandbox_id, requester=request.requester)
            return
    await released(sandboxes, sandbox_id, request.requester)


async def released(sandboxes: Sandboxes, sandbox_id: str, requester: str | None) -> None:
    """Tell whoever waits for the sandbox that this instance let go of it."""
    if requester is not None:
        await sandboxes.handoffs.mark(sandbox_id, requester, HandoffState.RELEASED)
    await sandboxes.signals.publish(channels.RELEASED, sandbox_id)
    log.info("handoff.released", sandbox_id=sandbox_id, requester=requester)


async def answer_pending(sandboxes: Sandboxes) -> None:
    for request in await sandboxes.handoffs.pending():
        if sandboxes.ownership.holds(request.sandbox_id):
            await hand_off(sandboxes, request.sandbox_id)


async def serve_handoffs(sandboxes: Sandboxes) -> None:
    """Until cancelled: answer handoff requests and deletes for what runs here, and wake the
    calls waiting for a handoff; on signals, and every POLL_S."""
    listening = asyncio.create_task(_listen(sandboxes))
    try:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await answer_pending(sandboxes)
            except StoreUnavailable:
                pass  # polled again soon
            except Exception:
                log.exception("handoff.poll_failed")
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening


async def _listen(sandboxes: Sandboxes) -> None:
    while True:
        try:
            subscription = await sandboxes.signals.subscribe(
                channels.HANDOFF, channels.RELEASED, channels.DELETED)
            async with subscription:
                async for signal in subscription:
                    _dispatch(sandboxes, signal)
        except StoreUnavailable:
            await asyncio.sleep(1)
        except Exception:
            log.exception("handoff.listen_failed")
            await asyncio.sleep(1)


def _dispatch(sandboxes: Sandboxes, signal: Signal) -> None:
    sandbox_id = signal.payload
    if signal.missed:
        for waiting in list(sandboxes.handed_over):
            wake(sandboxes, waiting)
        spawn(sandboxes, answer_pending(sandboxes))
    elif signal.channel == channels.RELEASED:
        wake(sandboxes, sandbox_id)
    elif sandboxes.ownership.holds(sandbox_id):
        if signal.channel == channels.HANDOFF:
            spawn(sandboxes, hand_off(sandboxes, sandbox_id))
        elif signal.channel == channels.DELETED:
            spawn(sandboxes, end_if_deleted(sandboxes, sandbox_id))


def spawn(sandboxes: Sandboxes, work: Coroutine[Any, Any, None]) -> None:
    """Run owner-side work beside the listener; its failure is logged, never lost."""
    task = asyncio.create_task(work)
    sandboxes.background.add(task)

    def done(finished: asyncio.Task[None]) -> None:
        sandboxes.background.discard(finished)
        if not finished.cancelled() and finished.exception() is not None:
            log.error("handoff.work_failed", error=repr(finished.exception()))

    task.add_done_callback(done)
