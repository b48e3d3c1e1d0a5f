"""Managed sandboxes: create, list, inspect, suspend, restore, delete."""

from __future__ import annotations

import math

from dependency_injector.wiring import Provide, inject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.containers import Container
from sandbox.domain.errors import InvalidRequest
from sandbox.domain.lifecycle import SandboxService
from sandbox.domain.limits import LimitPolicy
from sandbox.domain.model import Language, SandboxState
from sandbox.domain.packages import PackagePolicy, package_layers
from sandbox.domain.ports import PackageInstaller
from sandbox.entrypoints.env_vars import checked_env
from sandbox.entrypoints.json_body import read_json_fields
from sandbox.entrypoints.languages import parse_language
from sandbox.entrypoints.paths import sandbox_id_of
from sandbox.entrypoints.query import checked_query
from sandbox.settings import Settings

CREATE_FIELDS = ("language", "timeout", "memory_mb", "env", "idle_timeout", "packages")
STATES = ", ".join(state.value for state in SandboxState)


@inject
async def create_sandbox(
    request: Request,
    service: SandboxService = Provide[Container.sandbox_service],
    policy: LimitPolicy = Provide[Container.limit_policy],
    settings: Settings = Provide[Container.settings],
    installer: PackageInstaller = Provide[Container.package_installer],
    package_policy: PackagePolicy = Provide[Container.package_policy],
) -> Response:
    checked_query(request.query_params, ())
    # An empty body asks for every default, so `curl -X POST /sandboxes` is enough.
    fields = await read_json_fields(request, settings.max_body_bytes, CREATE_FIELDS,
                                    empty_ok=True)
    given_language = fields.text("language")
    language = parse_language("python" if given_language is None else given_language)
    limits = policy.resolve(timeout_s=fields.number("timeout"),
                            memory_mb=fields.integer("memory_mb"))
    env = checked_env(fields.text_mapping("env") or {})
    idle_timeout = _idle_timeout(fields.number("idle_timeout"), settings)
    packages = fields.texts("packages") or []
    if packages and language is not Language.PYTHON:
        raise InvalidRequest("packages can only be installed for Python")
    # A running sandbox cannot gain mounts: its packages are installed now, for all its execs.
    layers = await package_layers(installer, None, b"", packages, package_policy)

    sandbox = await service.create_session(language, limits, env, idle_timeout, layers)
    return JSONResponse(sandbox.to_dict(), 201, {"Location": f"/sandboxes/{sandbox.sandbox_id}"})


def _idle_timeout(given: float | None, settings: Settings) -> float:
    if given is None:
        return settings.default_idle_timeout_s
    if not (math.isfinite(given) and 0 < given <= settings.max_idle_timeout_s):
        raise InvalidRequest(
            f"idle_timeout must be more than 0 and at most {settings.max_idle_timeout_s:g} seconds"
        )
    return given


@inject
async def list_sandboxes(
    request: Request, service: SandboxService = Provide[Container.sandbox_service]
) -> Response:
    query = checked_query(request.query_params, ("state",))
    state = _state(query.get("state"))
    sandboxes = await service.list_sandboxes(state)
    return JSONResponse({"sandboxes": [sandbox.to_dict() for sandbox in sandboxes]})


def _state(value: str | None) -> SandboxState | None:
    if value is None:
        return None
    try:
        return SandboxState(value)
    except ValueError:
        raise InvalidRequest(f"state must be one of {STATES}, not {value[:40]!r}") from None


@inject
async def inspect_sandbox(
    request: Request, service: SandboxService = Provide[Container.sandbox_service]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    return JSONResponse((await service.get(sandbox_id)).to_dict())


@inject
async def suspend_sandbox(
    request: Request, service: SandboxService = Provide[Container.sandbox_service]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    return JSONResponse((await service.suspend(sandbox_id)).to_dict())


@inject
async def restore_sandbox(
    request: Request, service: SandboxService = Provide[Container.sandbox_service]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    return JSONResponse((await service.restore(sandbox_id)).to_dict())


@inject
async def delete_sandbox(
    request: Request, service: SandboxService = Provide[Container.sandbox_service]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    await service.delete(sandbox_id)
    return JSONResponse({"sandbox_id": sandbox_id, "deleted": True})
