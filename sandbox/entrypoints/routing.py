"""One route per path, dispatching on the method.

Starlette matches routes in order and answers a wrong method with the `Allow` of the first
route whose path matched; with one route per path that header names every method it takes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Endpoint = Callable[[Request], Awaitable[Response]]


def route(path: str, *, answers_head: bool = True, **handlers: Endpoint) -> Route:
    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    first = next(iter(handlers.values()))
    built = Route(path, dispatch, methods=list(handlers), name=getattr(first, "__name__", None))
    if not answers_head:
        # Starlette adds HEAD wherever GET is; a GET that changes state must not answer it.
        built.methods = set(handlers)
    return built
