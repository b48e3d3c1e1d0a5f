"""A fuzz of every operation in /openapi.json: hypothesis draws path parameters, query
parameters, content types and bodies from the document's own schemas, and now and then values
that break them (any JSON, any bytes, unknown fields and parameters, lone surrogates). No
answer may be a 5xx, each status must be one the document names for the operation, and every
error must be in the error shape. Bounded: 50 examples per operation, derandomized."""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from e2e.support import wait_for_state
from sandbox.adapters.fake import FakeSandboxRuntime
from sandbox.entrypoints.openapi import DOCUMENT

Schema = dict[str, Any]

OPERATIONS = [(path, method) for path, item in DOCUMENT["paths"].items() for method in item]
EXAMPLES_PER_OPERATION = 50
# Sandboxes a path's id can name: one made for the example in each state, or none.
ID_KINDS = ("running", "suspended", "exited", "well-formed", "malformed")
ODD_CONTENT_TYPES = ("application/json", "text/plain", "application/octet-stream",
                     "multipart/form-data; boundary=x", "application/vnd.x+json", ";", "")

# Any code point, lone surrogates too: JSON can carry them escaped ("\\ud800").
ANY_TEXT = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=20)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)


class Schemas:
    """Hypothesis strategies from the JSON Schemas of one OpenAPI document (the subset it
    uses), each mixed with arbitrary JSON so that invalid input is drawn as well."""

    def __init__(self, document: Schema) -> None:
        self.components: Schema = document["components"]["schemas"]

    def valid_or_not(self, schema: Schema) -> st.SearchStrategy[Any]:
        """Mostly valid: a call with several parts must often get all of them right to reach
        the code behind the checks."""
        return st.integers(0, 4).flatmap(
            lambda pick: ANY_JSON if pick == 0 else self.valid(schema))

    def valid(self, schema: Schema) -> st.SearchStrategy[Any]:
        if "$ref" in schema:
            return self.valid(self.components[schema["$ref"].rsplit("/", 1)[-1]])
        if "oneOf" in schema:
            base = {key: value for key, value in schema.items() if key != "oneOf"}
            return st.one_of([self.valid({**base, **choice}) for choice in schema["oneOf"]])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        if "const" in schema:
            return st.just(schema["const"])
        kinds = schema.get("type")
        if isinstance(kinds, list):
            return st.one_of([self.valid({**schema, "type": kind}) for kind in kinds])
        return self._of_type(kinds, schema)

    def _of_type(self, kind: str | None, schema: Schema) -> st.SearchStrategy[Any]:
        if kind == "string":
            if "pattern" in schema:
                return st.from_regex(schema["pattern"], fullmatch=True)
            return st.text(max_size=min(schema.get("maxLength", 60), 60))
        if kind == "number":
            low = schema.get("exclusiveMinimum", schema.get("minimum"))
            return st.floats(min_value=low, max_value=schema.get("maximum", 400),
                             exclude_min="exclusiveMinimum" in schema)
        if kind == "integer":
            low = schema.get("minimum", -10)
            return st.integers(min_value=low, max_value=schema.get("maximum", low + 5000))
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        if kind == "array":
            return st.lists(self.valid_or_not(schema.get("items", {})),
                            min_size=schema.get("minItems", 0),
                            max_size=min(schema.get("maxItems", 4), 4))
        if kind == "object" or "properties" in schema:
            return self._object(schema)
        return ANY_JSON

    def _object(self, schema: Schema) -> st.SearchStrategy[Any]:
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = st.fixed_dictionaries(
            {name: self.valid_or_not(properties[name]) for name in required if name in properties},
            optional={name: self.valid_or_not(sub) for name, sub in properties.items()
                      if name not in required},
        )
        extra = schema.get("additionalProperties")
        if not isinstance(extra, dict):  # now and then a field it does not know
            unknown = st.integers(0, 4).flatmap(
                lambda pick: st.dictionaries(ANY_TEXT, ANY_JSON, min_size=1, max_size=2)
                if pick == 3 else st.just({}))
            return st.builds(lambda known, more: {**more, **known}, fixed, unknown)
        names = schema.get("propertyNames", {}).get("pattern")
        keys = st.from_regex(names, fullmatch=True) if names else st.text(max_size=10)
        return st.builds(lambda a, b: {**b, **a}, fixed,
                         st.dictionaries(keys, self.valid_or_not(extra), max_size=4))


def as_query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value)


@st.composite
def requests_for(draw: st.DrawFn, document: Schema, path: str, method: str) -> dict[str, Any]:
    """One call of the operation: where its id points, its file path, query, headers, body."""
    operation = document["paths"][path][method]
    schemas = Schemas(document)
    parameters = operation.get("parameters", [])
    query = {}
    for parameter in parameters:
        wanted = parameter.get("required") or draw(st.integers(0, 2)) == 1
        if parameter["in"] == "query" and wanted:
            value = draw(schemas.valid_or_not(parameter["schema"]))
            query[parameter["name"]] = as_query_value(value)
    if draw(st.integers(0, 9)) == 7:  # now and then (hypothesis favours the ends of a range)
        query[draw(st.text(min_size=1, max_size=10))] = draw(st.text(max_size=10))
    call: dict[str, Any] = {"method": method.upper(), "query": query, "headers": {},
                            "id_kind": draw(st.sampled_from(ID_KINDS)),
                            "malformed_id": draw(st.text(min_size=1, max_size=30)),
                            "file_path": draw(st.just("notes.txt") | st.text(min_size=1,
                                                                             max_size=60)),
                            "content": None}
    body = operation.get("requestBody")
    if body is not None and (body.get("required") or draw(st.integers(0, 2)) != 1):
        media_type = draw(st.sampled_from(list(body["content"]))
                          | st.sampled_from(ODD_CONTENT_TYPES))
        schema = body["content"].get(media_type, {}).get("schema", {})
        if schema.get("format") == "binary" or media_type not in body["content"]:
            content = draw(st.binary(max_size=200))
        else:
            value = draw(schemas.valid_or_not(schema))
            content = json.dumps(value).encode() if draw(st.integers(0, 9)) else b"{"
        call["headers"]["Content-Type"] = media_type if media_type != "*/*" else "text/plain"
        call["content"] = content
    return call


def sandbox_of_kind(client: TestClient, kind: str) -> str | None:
    if kind == "exited":
        response = client.post("/execute?language=bash&detach=true", content=b"exit 3\n")
        sandbox_id: str = response.json()["sandbox_id"]
        wait_for_state(client, sandbox_id, "exited")
        return sandbox_id
    if kind in ("running", "suspended"):
        sandbox_id = client.post("/sandboxes", json={}).json()["sandbox_id"]
        client.put(f"/sandboxes/{sandbox_id}/files/notes.txt", content=b"notes")
        if kind == "suspended":
            client.post(f"/sandboxes/{sandbox_id}/suspend")
        return sandbox_id
    return None


def assert_answer_is_sound(response: Any, operation: Schema) -> None:
    status = response.status_code
    assert status < 500, response.text
    assert str(status) in operation["responses"], (status, response.text)
    content_type = response.headers.get("content-type", "")
    if status >= 400:
        error = response.json()["error"]
        assert set(error) == {"code", "message"}
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
    elif content_type.startswith("application/json"):
        response.json()
    elif content_type.startswith("application/x-ndjson"):
        events = [json.loads(line) for line in response.text.splitlines()]
        assert "error" not in [event["type"] for event in events], events


def made_by(response: Any) -> str | None:
    """The id of a sandbox the call created, to delete after the example."""
    if response.status_code in (201, 202) and "sandbox_id" in response.text:
        sandbox_id: str = response.json().get("sandbox_id", "")
        return sandbox_id or None
    return None


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_no_call_drawn_from_the_document_breaks_the_server(
    client: TestClient, runtime: FakeSandboxRuntime, path: str, method: str
) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"][path][method]

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests_for(document, path, method))
    def call(drawn: dict[str, Any]) -> None:
        made = sandbox_of_kind(client, drawn["id_kind"])
        sandbox_id = made or (drawn["malformed_id"] if drawn["id_kind"] == "malformed"
                              else "0" * 24)
        # Following the output of a running session would stream until it stops.
        if path.endswith("/output") and drawn["id_kind"] == "running":
            drawn["query"].pop("follow", None)
        target = (path.replace("{sandbox_id}", quote(sandbox_id, safe=""))
                  .replace("{path}", quote(drawn["file_path"], safe="/")))
        response = client.request(drawn["method"], target, params=drawn["query"],
                                  headers=drawn["headers"], content=drawn["content"])
        for leftover in (made, made_by(response)):
            if leftover is not None:
                client.delete(f"/sandboxes/{leftover}")

        assert_answer_is_sound(response, operation)

    call()

    assert client.get("/healthz").status_code == 200
    assert client.get("/list").json()["sandboxes"] == []
    assert runtime.live == set()
