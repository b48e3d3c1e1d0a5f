"""Templates and forks: snapshot a running sandbox, list and delete templates, fork."""

from __future__ import annotations

from dependency_injector.wiring import Provide, inject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.containers import Container
from sandbox.domain.errors import InvalidRequest
from sandbox.domain.lifecycle import copies, templates
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.entrypoints.json_body import read_json_fields
from sandbox.entrypoints.paths import sandbox_id_of
from sandbox.entrypoints.precheck import require_running
from sandbox.entrypoints.query import checked_query
from sandbox.settings import Settings


@inject
async def snapshot_sandbox(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    template = await templates.snapshot_sandbox(sandboxes, sandbox_id)
    return JSONResponse(template.to_dict(), 201,
                        {"Location": f"/templates/{template.template_id}"})


@inject
async def list_templates(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    checked_query(request.query_params, ())
    found = await templates.list_templates(sandboxes)
    return JSONResponse({"templates": [template.to_dict() for template in found]})


@inject
async def inspect_template(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    checked_query(request.query_params, ())
    template_id = request.path_params["template_id"]
    return JSONResponse((await templates.get_template(sandboxes, template_id)).to_dict())


@inject
async def delete_template(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    checked_query(request.query_params, ())
    template_id = request.path_params["template_id"]
    await templates.delete_template(sandboxes, template_id)
    return JSONResponse({"template_id": template_id, "deleted": True})


@inject
async def fork_sandbox(
    request: Request,
    sandboxes: Sandboxes = Provide[Container.sandboxes],
    settings: Settings = Provide[Container.settings],
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    # As for an exec: an unknown or stopped sandbox is said before the body is judged.
    await require_running(sandboxes, sandbox_id, "fork")
    fields = await read_json_fields(request, settings.max_body_bytes, ("count",), empty_ok=True)
    count = fields.integer("count")
    if count is None:
        raise InvalidRequest(f"count is required: how many copies (1 to {settings.max_fork})")
    made = await copies.fork_sandbox(sandboxes, sandbox_id, count)
    return JSONResponse({"sandboxes": [sandbox.to_dict() for sandbox in made]}, 201)
