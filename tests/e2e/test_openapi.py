from __future__ import annotations

import re

from starlette.routing import Route
from starlette.testclient import TestClient

from sandbox.entrypoints.app import create_app
from sandbox.entrypoints.openapi import DOCUMENT
from sandbox.settings import Settings

OPERATIONS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def routed(settings: Settings) -> set[tuple[str, str]]:
    pairs = set()
    for route in create_app(settings).routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {path:path} is {path} there
        # HEAD is Starlette's automatic twin of GET, not an operation of its own.
        pairs |= {(path, method.lower()) for method in route.methods or () if method != "HEAD"}
    return pairs


def documented() -> set[tuple[str, str]]:
    return {(path, method) for path, item in DOCUMENT["paths"].items()
            for method in item if method in OPERATIONS}


def test_every_route_is_documented_and_every_documented_call_is_routed(
    settings: Settings,
) -> None:
    assert routed(settings) == documented()


def test_every_path_parameter_is_described() -> None:
    for path, item in DOCUMENT["paths"].items():
        in_path = set(re.findall(r"\{(\w+)\}", path))
        for method, operation in item.items():
            described = {parameter["name"] for parameter in operation.get("parameters", [])
                         if parameter["in"] == "path"}
            assert described == in_path, (method, path)


def test_every_reference_resolves() -> None:
    text = str(DOCUMENT)
    names = set(re.findall(r"#/components/schemas/(\w+)", text))

    assert names <= DOCUMENT["components"]["schemas"].keys()


def test_the_document_is_served(client: TestClient) -> None:
    response = client.get("/openapi.json")

    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.1")
    assert "/sandboxes/{sandbox_id}/exec" in response.json()["paths"]
