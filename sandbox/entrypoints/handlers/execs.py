"""POST /sandboxes/{id}/exec: run a script or a program in a long-lived sandbox."""

from __future__ import annotations

from functools import partial

from dependency_injector.wiring import Provide, inject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.containers import Container
from sandbox.domain.lifecycle import work
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.limits import LimitPolicy
from sandbox.entrypoints.body import read_capped_body
from sandbox.entrypoints.disconnect import unless_client_leaves
from sandbox.entrypoints.exec_request import command_from_json, command_from_script
from sandbox.entrypoints.json_body import is_json
from sandbox.entrypoints.paths import sandbox_id_of
from sandbox.entrypoints.precheck import require_running
from sandbox.entrypoints.query import checked_query, flag
from sandbox.entrypoints.streaming import ExecutionStream
from sandbox.settings import Settings


@inject
async def exec_in_sandbox(
    request: Request,
    sandboxes: Sandboxes = Provide[Container.sandboxes],
    policy: LimitPolicy = Provide[Container.limit_policy],
    settings: Settings = Provide[Container.settings],
) -> Response:
    sandbox_id = sandbox_id_of(request)
    as_json = is_json(request)
    query = checked_query(request.query_params,
                          ("stream",) if as_json else ("language", "timeout", "stream"))
    stream = flag(query, "stream")
    await require_running(sandboxes, sandbox_id, "exec in")
    body = await read_capped_body(request, settings.max_body_bytes)
    command = (command_from_json(body, policy) if as_json
               else command_from_script(query, body, policy))

    run = partial(work.exec_in_sandbox, sandboxes, sandbox_id, command.program, command.stdin,
                  command.timeout_s)
    if stream:
        return ExecutionStream(run)
    return JSONResponse((await unless_client_leaves(request.receive, run())).to_dict())
