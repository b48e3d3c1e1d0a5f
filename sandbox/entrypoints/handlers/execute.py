"""POST /execute: run a script in a fresh sandbox and answer with its result, or start it
detached and answer at once."""

from __future__ import annotations

from functools import partial

from dependency_injector.wiring import Provide, inject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.containers import Container
from sandbox.domain.egress import EgressPolicy
from sandbox.domain.errors import InvalidRequest
from sandbox.domain.lifecycle import creation, execution
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.limits import LimitPolicy
from sandbox.domain.packages import split_packages_param
from sandbox.entrypoints.body import read_capped_body
from sandbox.entrypoints.disconnect import unless_client_leaves
from sandbox.entrypoints.egress_request import allow_list_from_query
from sandbox.entrypoints.languages import parse_language
from sandbox.entrypoints.query import checked_query, flag, optional_float, optional_int
from sandbox.entrypoints.streaming import ExecutionStream
from sandbox.settings import Settings

PARAMETERS = ("language", "timeout", "memory_mb", "stream", "detach", "packages",
              "allow_hosts", "template")
# A script run from a template gets the template's memory, packages and network.
NOT_WITH_TEMPLATE = ("memory_mb", "packages", "allow_hosts", "detach")


@inject
async def execute_script(
    request: Request,
    sandboxes: Sandboxes = Provide[Container.sandboxes],
    policy: LimitPolicy = Provide[Container.limit_policy],
    settings: Settings = Provide[Container.settings],
    egress_policy: EgressPolicy = Provide[Container.egress_policy],
) -> Response:
    query = checked_query(request.query_params, PARAMETERS)
    if "template" in query:
        return await _execute_from_template(request, query, sandboxes, policy, settings)
    language = parse_language(query.get("language"))
    stream, detach = flag(query, "stream"), flag(query, "detach")
    timeout_s = optional_float(query, "timeout", "seconds")
    if detach and timeout_s is None:
        # Nobody waits on a detached script: it may run as long as the server allows.
        timeout_s = settings.max_timeout_s
    limits = policy.resolve(timeout_s=timeout_s,
                            memory_mb=optional_int(query, "memory_mb", "MiB"))
    if stream and detach:
        raise InvalidRequest(
            "stream=true and detach=true do not go together; follow a detached script with "
            "GET /sandboxes/{id}/output?follow=true"
        )
    packages = split_packages_param(query.get("packages", ""))
    network_allow = allow_list_from_query(query, egress_policy)
    source = await read_capped_body(request, settings.max_body_bytes)
    if not source:
        raise InvalidRequest("the body is empty: send the script as the request body")

    if detach:
        # A detached script is a managed sandbox (suspend, restore, output kept): cold.
        sandbox = await creation.run_detached(sandboxes, language, source, limits, packages,
                                              network_allow)
        return JSONResponse(sandbox.to_dict(), 202,
                            {"Location": f"/sandboxes/{sandbox.sandbox_id}"})
    run = partial(execution.execute_script, sandboxes, language, source, limits,
                  packages=packages, network_allow=network_allow)
    if stream:
        return ExecutionStream(run)
    return JSONResponse((await unless_client_leaves(request.receive, run())).to_dict())


async def _execute_from_template(
    request: Request, query: dict[str, str], sandboxes: Sandboxes, policy: LimitPolicy,
    settings: Settings,
) -> Response:
    refused = [name for name in NOT_WITH_TEMPLATE if name in query]
    if refused:
        raise InvalidRequest(f"{', '.join(refused)} cannot be given with template: the script "
                             "runs with the template's memory, packages and network, and "
                             "waits for its result (start a sandbox from the template to "
                             "keep one)")
    language = parse_language(query["language"]) if "language" in query else None
    timeout_s = optional_float(query, "timeout", "seconds")
    if timeout_s is not None:
        timeout_s = policy.resolve(timeout_s=timeout_s).timeout_s
    source = await read_capped_body(request, settings.max_body_bytes)
    if not source:
        raise InvalidRequest("the body is empty: send the script as the request body")

    run = partial(execution.execute_from_template, sandboxes, query["template"], language,
                  source, timeout_s)
    if flag(query, "stream"):
        return ExecutionStream(run)
    return JSONResponse((await unless_client_leaves(request.receive, run())).to_dict())
