"""Creating managed sandboxes: a detached script, or a long-lived session."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import structlog

from sandbox.domain.errors import InvalidRequest, RuntimeFailure
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.supervision import output_sink, supervise
from sandbox.domain.model import (
    IDLE,
    Language,
    Limits,
    Program,
    Sandbox,
    SandboxKind,
    SandboxSpec,
    SandboxState,
)
from sandbox.domain.ports import OutputSink
from sandbox.domain.reasons import Reason, ReasonCode

log = structlog.get_logger(__name__)


async def run_detached(
    sandboxes: Sandboxes,
    language: Language,
    source: bytes,
    limits: Limits,
    packages: Iterable[str] = (),
    network_allow: tuple[str, ...] = (),
) -> Sandbox:
    """Start a script in a new sandbox and return at once; it runs on, its output kept.
    Its packages (`packages` and a PEP 723 block) are installed first: a 422 costs no
    sandbox. `network_allow` is its egress allow-list (checked by the caller)."""
    layers = await sandboxes.package_layers(language, source, packages)
    sandbox = _new(sandboxes, SandboxKind.SCRIPT, language, limits, layers,
                   await sandboxes.layer_pins(layers), network_allow=network_allow)
    return await _create(sandboxes, sandbox, Program.script(language, source))


async def create_session(
    sandboxes: Sandboxes,
    language: Language,
    limits: Limits,
    *,
    env: tuple[tuple[str, str], ...] = (),
    idle_timeout_s: float | None = None,
    packages: Iterable[str] = (),
    network_allow: tuple[str, ...] = (),
) -> Sandbox:
    """A long-lived sandbox that idles until work arrives with exec. A running sandbox
    cannot gain mounts: its packages are installed now, for all its execs."""
    packages = list(packages)
    if packages and language is not Language.PYTHON:
        raise InvalidRequest("packages can only be installed for Python")
    layers = await sandboxes.package_layers(None, b"", packages)
    sandbox = _new(sandboxes, SandboxKind.SESSION, language, limits, layers,
                   await sandboxes.layer_pins(layers), env, idle_timeout_s, network_allow)
    return await _create(sandboxes, sandbox, IDLE)


def _new(
    sandboxes: Sandboxes,
    kind: SandboxKind,
    language: Language,
    limits: Limits,
    package_dirs: tuple[str, ...],
    package_pins: tuple[tuple[str, ...], ...],
    env: tuple[tuple[str, str], ...] = (),
    idle_timeout_s: float | None = None,
    network_allow: tuple[str, ...] = (),
) -> Sandbox:
    now = sandboxes.clock()
    return Sandbox(sandbox_id=new_sandbox_id(), kind=kind, state=SandboxState.CREATING,
                   language=language, limits=limits, created_at=now, updated_at=now,
                   env=env, idle_timeout_s=idle_timeout_s, last_activity_at=now,
                   package_dirs=package_dirs, package_pins=package_pins,
                   network_allow=network_allow)


async def _create(sandboxes: Sandboxes, sandbox: Sandbox, program: Program) -> Sandbox:
    async def launch(spec: SandboxSpec, sink: OutputSink) -> None:
        await sandboxes.runtime.launch(spec, program, sink)

    async with sandboxes.admission.admitted(sandbox):
        return await start_new(sandboxes, sandbox, launch)


# How a new sandbox is brought up: launched, or restored from an image.
Start = Callable[[SandboxSpec, OutputSink], Awaitable[None]]


async def start_new(
    sandboxes: Sandboxes,
    sandbox: Sandbox,
    start: Start,
    failure: ReasonCode = ReasonCode.CREATE_FAILED,
    recorded: bool = False,
) -> Sandbox:
    """Record a new sandbox (unless `recorded`: then the caller has, with `record_new`), start
    it and supervise it; the caller has admitted it. On a failure the record says `failed`,
    with `failure` as its reason."""
    structlog.contextvars.bind_contextvars(sandbox_id=sandbox.sandbox_id)
    async with sandboxes.lock(sandbox.sandbox_id):
        if not recorded:
            await record_new(sandboxes, sandbox)
        try:
            sink = output_sink(sandboxes, sandbox)
            await start(sandbox.spec(), sink)
        except Exception as error:
            # The runtime has removed what it started; the record must not stay `creating`.
            log.error("sandbox.create_failed", sandbox_id=sandbox.sandbox_id,
                      detail=_detail(error))
            await _failed(sandboxes, sandbox, failure)
            raise
        except BaseException:
            # Cancelled: the client left.
            await asyncio.shield(_failed(sandboxes, sandbox, ReasonCode.CREATE_INTERRUPTED))
            raise
        sandbox = await sandboxes.save(sandbox, SandboxState.RUNNING,
                                       running_since=sandbox.created_at)
        supervise(sandboxes, sandbox, sink)
    log.info("sandbox.created", kind=sandbox.kind.value, language=sandbox.language,
             template_id=sandbox.template_id)
    return sandbox


async def record_new(sandboxes: Sandboxes, sandbox: Sandbox) -> None:
    """Lease a new sandbox to this instance, then record it: no record that may run is ever
    without a lease."""
    if not await sandboxes.ownership.acquire(sandbox.sandbox_id):
        raise RuntimeFailure(f"a new sandbox id {sandbox.sandbox_id} is leased already")
    try:
        await sandboxes.store.add(sandbox)
    except BaseException:
        await asyncio.shield(sandboxes.ownership.release(sandbox.sandbox_id))
        raise


async def _failed(sandboxes: Sandboxes, sandbox: Sandbox, code: ReasonCode) -> None:
    try:
        await sandboxes.save(sandbox, SandboxState.FAILED, Reason.of(code))
    finally:
        await sandboxes.ownership.release(sandbox.sandbox_id)


def _detail(error: Exception) -> str:
    return error.message if isinstance(error, RuntimeFailure) else repr(error)
