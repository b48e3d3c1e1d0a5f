"""POST /execute: run a script in a fresh sandbox and answer with its result."""

from __future__ import annotations

from functools import partial

from dependency_injector.wiring import Provide, inject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.containers import Container
from sandbox.domain import services
from sandbox.domain.errors import InvalidRequest
from sandbox.domain.limits import LimitPolicy
from sandbox.domain.model import Language
from sandbox.domain.ports import SandboxRuntime
from sandbox.entrypoints.body import read_capped_body
from sandbox.entrypoints.query import checked_query, flag, optional_float, optional_int
from sandbox.entrypoints.streaming import ExecutionStream
from sandbox.settings import Settings

PARAMETERS = ("language", "timeout", "memory_mb", "stream")
LANGUAGES = ", ".join(language.value for language in Language)


@inject
async def execute_script(
    request: Request,
    runtime: SandboxRuntime = Provide[Container.runtime],
    policy: LimitPolicy = Provide[Container.limit_policy],
    settings: Settings = Provide[Container.settings],
) -> Response:
    query = checked_query(request.query_params, PARAMETERS)
    language = _language(query.get("language"))
    limits = policy.resolve(
        timeout_s=optional_float(query, "timeout", "seconds"),
        memory_mb=optional_int(query, "memory_mb", "MiB"),
    )
    stream = flag(query, "stream")
    source = await read_capped_body(request, settings.max_body_bytes)
    if not source:
        raise InvalidRequest("the body is empty: send the script as the request body")

    if stream:
        return ExecutionStream(partial(services.execute_script, runtime, language, source, limits))
    result = await services.execute_script(runtime, language, source, limits)
    return JSONResponse(result.to_dict())


def _language(value: str | None) -> Language:
    if value is None:
        raise InvalidRequest(f"the language parameter is required: {LANGUAGES}")
    try:
        return Language(value)
    except ValueError:
        raise InvalidRequest(f"language must be one of {LANGUAGES}, not {value[:40]!r}") from None
