"""Files inside a long-lived sandbox: upload, download, list. Uploads and downloads stream:
the server holds a few chunks of a file at a time, never the whole of it."""

from __future__ import annotations

from functools import partial

from dependency_injector.wiring import Provide, inject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.containers import Container
from sandbox.domain.lifecycle import work
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import iso_time
from sandbox.entrypoints.body import capped_chunks
from sandbox.entrypoints.downloads import FileDownload
from sandbox.entrypoints.paths import WORKSPACE, sandbox_id_of, sandbox_path
from sandbox.entrypoints.precheck import require_running
from sandbox.entrypoints.query import checked_query
from sandbox.settings import Settings


@inject
async def upload_file(
    request: Request,
    sandboxes: Sandboxes = Provide[Container.sandboxes],
    settings: Settings = Provide[Container.settings],
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    path = sandbox_path(request.path_params["path"])
    await require_running(sandboxes, sandbox_id, "write files in")
    chunks = capped_chunks(request, settings.max_file_bytes)

    size = await work.write_file(sandboxes, sandbox_id, path, chunks)
    return JSONResponse({"path": path, "size": size}, 201)


@inject
async def download_file(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    checked_query(request.query_params, ())
    path = sandbox_path(request.path_params["path"])

    return FileDownload(partial(work.read_file, sandboxes, sandbox_id, path))


@inject
async def list_files(
    request: Request, sandboxes: Sandboxes = Provide[Container.sandboxes]
) -> Response:
    sandbox_id = sandbox_id_of(request)
    query = checked_query(request.query_params, ("path",))
    path = sandbox_path(query.get("path", WORKSPACE))

    entries = await work.list_files(sandboxes, sandbox_id, path)
    return JSONResponse({
        "path": path,
        "entries": [
            {"name": entry.name, "kind": entry.kind, "size": entry.size,
             "modified_at": iso_time(entry.modified_at)}
            for entry in entries
        ],
    })
