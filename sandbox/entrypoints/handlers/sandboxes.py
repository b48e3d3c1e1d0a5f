"""Managed sandboxes: create, list, inspect, suspend, restore, delete."""

from __future__ import annotations

import math

from dependency_injector.wiring import Provide, inject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.containers import Container
from sandbox.domain.egress import EgressPolicy
from sandbox.domain.errors import InvalidRequest
from sandbox.domain.lifecycle import creation, deletion, reading, restoration, suspension
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.limits import LimitPolicy
from sandbox.domain.model import SandboxState
from sandbox.entrypoints.egress_request import allow_list_from_json
from sandbox.entrypoints.env_vars import checked_env
from sandbox.entrypoints.json_body import read_json_fields
from sandbox.entrypoints.languages import parse_language
from sandbox.entrypoints.paths import sandbox_id_of
from sandbox.entrypoints.query import checked_query
from sandbox.settings import Settings

CREATE_FIELDS = ("language", "timeout", "memory_mb", "env", "idle_timeout", "packages",
                 "network")
STATES = ", ".join(state.value for state in SandboxState)


@inject
async def create_sandbox(
    request: Request,
    sandboxes: Sandboxes = Provide[Container.sandboxes],
    policy: LimitPolicy = Provide[Container.limit_policy],
    settings: Settings = Provide[Container.settings],
    egress_policy: EgressPolicy = Provide[Container.egress_policy],
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
    network_allow = allow_list_from_json(fields, egress_policy)

    sandbox = await creation.create_session(sandboxes, language, limits, env=env,
                                            idle_timeout_s=idle_timeout, packages=packages,
                                            network_allow=network_allow)
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
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    query = checked_query(request.query_params, ("state",))
    state = _state(query.get("state"))
    found = await reading.list_sandboxes(sandboxes, state)
    return JSONResponse({"sandboxes": [sandbox.to_dict() for sandbox in found]})


def _state(value: str | None) -> SandboxState | None:
    if value is None:
        return None
    try:
        return SandboxState(value)
    except ValueError:
        raise InvalidRequest(f"state must be one of {STATES}, not {value[:40]!r}") from None


@inject
async def inspect_sandbox(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    return JSONResponse((await reading.get_sandbox(sandboxes, sandbox_id)).to_dict())


@inject
async def suspend_sandbox(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    return JSONResponse((await suspension.suspend_sandbox(sandboxes, sandbox_id)).to_dict())


@inject
async def restore_sandbox(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    return JSONResponse((await restoration.restore_sandbox(sandboxes, sandbox_id)).to_dict())


@inject
async def delete_sandbox(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    await deletion.delete_sandbox(sandboxes, sandbox_id)
    return JSONResponse({"sandbox_id": sandbox_id, "deleted": True})
