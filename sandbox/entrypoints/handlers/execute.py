"""POST /execute: run a script in a fresh sandbox and answer with its result, or start it
detached and answer at once."""

from __future__ import annotations

from functools import partial

from dependency_injector.wiring import Provide, inject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.containers import Container
from sandbox.domain import services
from sandbox.domain.capacity import Capacity
from sandbox.domain.egress import EgressPolicy
from sandbox.domain.errors import InvalidRequest
from sandbox.domain.lifecycle import SandboxService
from sandbox.domain.limits import LimitPolicy
from sandbox.domain.metrics import Metrics
from sandbox.domain.packages import PackagePolicy, package_layers, split_packages_param
from sandbox.domain.ports import PackageInstaller, SandboxRuntime
from sandbox.entrypoints.body import read_capped_body
from sandbox.entrypoints.egress_request import allow_list_from_query
from sandbox.entrypoints.languages import parse_language
from sandbox.entrypoints.query import checked_query, flag, optional_float, optional_int
from sandbox.entrypoints.streaming import ExecutionStream
from sandbox.settings import Settings

PARAMETERS = ("language", "timeout", "memory_mb", "stream", "detach", "packages",
              "allow_hosts")


@inject
async def execute_script(
    request: Request,
    runtime: SandboxRuntime = Provide[Container.runtime],
    service: SandboxService = Provide[Container.sandbox_service],
    policy: LimitPolicy = Provide[Container.limit_policy],
    settings: Settings = Provide[Container.settings],
    installer: PackageInstaller = Provide[Container.package_installer],
    package_policy: PackagePolicy = Provide[Container.package_policy],
    capacity: Capacity = Provide[Container.capacity],
    metrics: Metrics = Provide[Container.metrics],
    egress_policy: EgressPolicy = Provide[Container.egress_policy],
) -> Response:
    query = checked_query(request.query_params, PARAMETERS)
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
    network_allow = allow_list_from_query(query, egress_policy)
    source = await read_capped_body(request, settings.max_body_bytes)
    if not source:
        raise InvalidRequest("the body is empty: send the script as the request body")
    # Installed (or found in the cache) before the sandbox starts: a 422 costs no sandbox.
    layers = await package_layers(installer, language, source,
                                  split_packages_param(query.get("packages", "")),
                                  package_policy)

    if detach:
        sandbox = await service.run_detached(language, source, limits, layers, network_allow)
        return JSONResponse(sandbox.to_dict(), 202,
                            {"Location": f"/sandboxes/{sandbox.sandbox_id}"})
    run = partial(services.execute_script, runtime, language, source, limits,
                  package_dirs=layers, capacity=capacity, metrics=metrics,
                  network_allow=network_allow)
    if stream:
        return ExecutionStream(run)
    return JSONResponse((await run()).to_dict())
