"""Code contexts of a running sandbox: start, list, run a cell, interrupt, restart, delete."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from dependency_injector.wiring import Provide, inject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.containers import Container
from sandbox.domain.errors import InvalidRequest
from sandbox.domain.lifecycle import contexts
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.limits import LimitPolicy
from sandbox.entrypoints.cell_streaming import CellStream
from sandbox.entrypoints.disconnect import unless_client_leaves
from sandbox.entrypoints.json_body import read_json_fields
from sandbox.entrypoints.languages import parse_language
from sandbox.entrypoints.paths import sandbox_id_of
from sandbox.entrypoints.precheck import require_running
from sandbox.entrypoints.query import checked_query, flag
from sandbox.settings import Settings

CREATE_FIELDS = ("language",)
RUN_FIELDS = ("code", "timeout")


def context_id_of(request: Request) -> str:
    """Checked by the use case, after the sandbox: an unknown sandbox is a 404 of its own."""
    context_id: str = request.path_params["context_id"]
    return context_id


@inject
async def create_context(
    request: Request,
    sandboxes: Sandboxes = Provide[Container.sandboxes],
    settings: Settings = Provide[Container.settings],
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    await require_running(sandboxes, sandbox_id, "start a context in")
    # An empty body asks for Python.
    fields = await read_json_fields(request, settings.max_body_bytes, CREATE_FIELDS,
                                    empty_ok=True)
    language = parse_language(fields.text("language") or "python")

    context = await contexts.create_context(sandboxes, sandbox_id, language)
    location = f"/sandboxes/{sandbox_id}/contexts/{context.context_id}"
    return JSONResponse(context.to_dict(), 201, {"Location": location})


@inject
async def list_contexts(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    found = await contexts.list_contexts(sandboxes, sandbox_id)
    return JSONResponse({"contexts": [context.to_dict() for context in found]})


@inject
async def run_cell(
    request: Request,
    sandboxes: Sandboxes = Provide[Container.sandboxes],
    policy: LimitPolicy = Provide[Container.limit_policy],
    settings: Settings = Provide[Container.settings],
) -> Response:
    sandbox_id, context_id = sandbox_id_of(request), context_id_of(request)
    stream = flag(checked_query(request.query_params, ("stream",)), "stream")
    await require_running(sandboxes, sandbox_id, "run a cell in")
    fields = await read_json_fields(request, settings.max_body_bytes, RUN_FIELDS)
    code = fields.text("code")
    if code is None:
        raise InvalidRequest("code is required: the cell to run")
    given = fields.number("timeout")
    # The policy checks the value against the same maximum as /execute.
    timeout_s = None if given is None else policy.resolve(timeout_s=given).timeout_s

    run = partial(contexts.run_cell, sandboxes, sandbox_id, context_id, code, timeout_s)
    if stream:
        return CellStream(run)
    return JSONResponse((await unless_client_leaves(request.receive, run())).to_dict())


@inject
async def interrupt_context(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    return await _act_on_context(request, sandboxes, contexts.interrupt_context, "interrupted")


@inject
async def restart_context(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    return await _act_on_context(request, sandboxes, contexts.restart_context, "restarted")


@inject
async def delete_context(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    return await _act_on_context(request, sandboxes, contexts.delete_context, "deleted")


async def _act_on_context(
    request: Request,
    sandboxes: Sandboxes,
    act: Callable[[Sandboxes, str, str], Awaitable[None]],
    done: str,
) -> Response:
    """One use case on one context, answered with what was done to it."""
    sandbox_id, context_id = sandbox_id_of(request), context_id_of(request)
    checked_query(request.query_params, ())
    await act(sandboxes, sandbox_id, context_id)
    return JSONResponse({"context_id": context_id, done: True})
