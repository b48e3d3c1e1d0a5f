"""GET /sandboxes/{id}/output: what a detached script printed so far, or a stream of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from dependency_injector.wiring import Provide, inject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from sandbox.containers import Container
from sandbox.domain.lifecycle import reading
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.entrypoints.paths import sandbox_id_of
from sandbox.entrypoints.query import checked_query, flag
from sandbox.entrypoints.streaming import ndjson_line


@inject
async def read_output(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    query = checked_query(request.query_params, ("follow",))
    if flag(query, "follow"):
        # An unknown sandbox is a 404, not an empty stream.
        await reading.get_sandbox(sandboxes, sandbox_id)
        return StreamingResponse(_lines(reading.follow_output(sandboxes, sandbox_id)),
                                 media_type="application/x-ndjson")

    sandbox, stdout, stderr = await reading.read_output(sandboxes, sandbox_id)
    return JSONResponse({
        "sandbox_id": sandbox.sandbox_id,
        "state": sandbox.state.value,
        "exit_code": sandbox.exit_code,
        "stdout": stdout.data.decode("utf-8", errors="replace"),
        "stderr": stderr.data.decode("utf-8", errors="replace"),
        "stdout_truncated": stdout.truncated,
        "stderr_truncated": stderr.truncated,
    })


async def _lines(events: AsyncIterator[dict[str, object]]) -> AsyncIterator[bytes]:
    async for event in events:
        yield ndjson_line(event)
