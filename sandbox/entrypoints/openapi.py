"""GET /openapi.json: the API as an OpenAPI 3.1 document, written by hand.

A test walks the app's routes and fails when a route and this document disagree.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.domain.reasons import ReasonCode

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: Schema, headers: Schema | None = None) -> Schema:
    answer: Schema = {"description": description,
                      "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _ndjson(description: str) -> Schema:
    return {"description": description,
            "content": {"application/x-ndjson": {"schema": _ref("Event")}}}


def _error(description: str, headers: Schema | None = None) -> Schema:
    return _json(description, _ref("Error"), headers)


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                                "schema": {"type": "integer"}}}
BAD_REQUEST = {"400": _error("bad input: an unknown, repeated or malformed parameter or field")}
NOT_FOUND = {"404": _error("no sandbox with this id (a malformed id names none)")}
WRONG_STATE = {"409": _error("the sandbox is not in a state that allows this call")}
TOO_LARGE = {"413": _error("the request body or the file is larger than allowed")}
AT_CAPACITY = {"429": _error(
    "at capacity (running sandboxes, executions at once, or their total memory), after a "
    "bounded wait for room", _RETRY_AFTER)}
UNAUTHORIZED = _error(
    "no bearer token, or not one the server accepts (only when it is configured with tokens)",
    {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}})
FORBIDDEN = _error(
    "a request from a web origin not in SANDBOX_CORS_ORIGINS, or (on every call but /healthz) "
    "under a Host name the server does not answer to: nothing is read or run")
RUNTIME_FAILED = {"503": _error("the sandbox runtime failed (not the script)")}
RECORD = {"200": _json("the sandbox record", _ref("Sandbox"))}
NO_PACKAGES = {"422": _error("the packages asked for could not be installed (pip's reason)")}

SANDBOX_ID = {"name": "sandbox_id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[0-9a-f]{24}$"}}
FILE_PATH = {"name": "path", "in": "path", "required": True,
             "description": "path in the sandbox; relative paths start at /workspace",
             "schema": {"type": "string", "maxLength": 4096}}


def _query(name: str, schema: Schema, description: str, required: bool = False) -> Schema:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


_FLAG = {"type": "string", "enum": ["true", "false"], "default": "false"}
LANGUAGE = {"type": "string", "enum": ["python", "bash"]}
STREAM = _query("stream", _FLAG, "answer with NDJSON events as output arrives")
TIMEOUT = _query("timeout", {"type": "number", "exclusiveMinimum": 0},
                 "seconds, capped by the server's maximum")
STATE = _query("state", _ref("State"), "only sandboxes in this state")


def _op(summary: str, responses: Schema, parameters: tuple[Schema, ...] = (),
        body: Schema | None = None) -> Schema:
    operation: Schema = {"summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = body
    return operation


_SCRIPT_BODY = {"required": True, "content": {"*/*": {"schema": {
    "type": "string", "format": "binary", "description": "the script"}}}}
_EXECUTE = _op(
    "Run a script in a fresh sandbox",
    {"200": {"description": "the result; with stream=true, NDJSON events",
             "content": {"application/json": {"schema": _ref("ExecutionResult")},
                         "application/x-ndjson": {"schema": _ref("Event")}}},
     "202": _json("detach=true: the sandbox record; the script runs on", _ref("Sandbox")),
     **BAD_REQUEST, **TOO_LARGE, **NO_PACKAGES, **AT_CAPACITY, **RUNTIME_FAILED},
    (_query("language", LANGUAGE, "the script's language", required=True), TIMEOUT,
     _query("memory_mb", {"type": "integer", "minimum": 16}, "memory limit in MiB"),
     STREAM, _query("detach", _FLAG, "answer 202 at once; the script runs on"),
     _query("packages", {"type": "string"},
            "comma-separated requirements (Python only), installed as wheels: a,b==1.2"),
     _query("allow_hosts", {"type": "string"},
            "comma-separated egress allow-list (host, *.domain, host:port), within the "
            "server's SANDBOX_EGRESS_ALLOW; the script reaches them through the proxy only")),
    _SCRIPT_BODY,
)
_LIST = _op("List the sandboxes this service knows",
            {"200": _json("the sandboxes", _ref("SandboxList")), **BAD_REQUEST}, (STATE,))
_SUSPEND = _op("Suspend a running sandbox to disk",
               {**RECORD, **BAD_REQUEST, **NOT_FOUND, **WRONG_STATE, **RUNTIME_FAILED},
               (SANDBOX_ID,))
_RESTORE = _op("Restore a suspended sandbox; its processes continue",
               {**RECORD, **BAD_REQUEST, **NOT_FOUND, **WRONG_STATE, **AT_CAPACITY,
                **RUNTIME_FAILED},
               (SANDBOX_ID,))
_DELETE = _op("Delete a sandbox and everything it left on disk",
              {"200": _json("deleted", _ref("Deleted")), **BAD_REQUEST, **NOT_FOUND,
               **RUNTIME_FAILED},
              (SANDBOX_ID,))
_CREATE = _op(
    "Create a long-lived sandbox",
    {"201": _json("the sandbox record", _ref("Sandbox")), **BAD_REQUEST, **TOO_LARGE,
     **NO_PACKAGES, **AT_CAPACITY, **RUNTIME_FAILED},
    body={"required": False,
          "content": {"application/json": {"schema": _ref("CreateSandbox")}}},
)
_EXEC = _op(
    "Run Python, Bash or a program in a running sandbox",
    {"200": {"description": "the result; with stream=true, NDJSON events",
             "content": {"application/json": {"schema": _ref("ExecutionResult")},
                         "application/x-ndjson": {"schema": _ref("Event")}}},
     **BAD_REQUEST, **NOT_FOUND, **WRONG_STATE, **TOO_LARGE, **RUNTIME_FAILED},
    (SANDBOX_ID, STREAM,
     _query("language", LANGUAGE, "with a script body (not JSON): its language"),
     _query("timeout", {"type": "number", "exclusiveMinimum": 0},
            "with a script body (not JSON): seconds")),
    {"required": True, "content": {
        "application/json": {"schema": _ref("ExecRequest")},
        "*/*": {"schema": {"type": "string", "format": "binary",
                           "description": "the script; ?language= names it"}}}},
)
_OUTPUT = _op(
    "Output of a detached script so far",
    {"200": {"description": "the output; with follow=true, NDJSON events until it ends",
             "content": {"application/json": {"schema": _ref("Output")},
                         "application/x-ndjson": {"schema": _ref("Event")}}},
     **BAD_REQUEST, **NOT_FOUND},
    (SANDBOX_ID, _query("follow", _FLAG, "stream the output until the sandbox stops")),
)
_FILE_ERRORS = {**BAD_REQUEST, **NOT_FOUND, **WRONG_STATE, **RUNTIME_FAILED}
_LIST_FILES = _op(
    "List a folder in a running sandbox",
    {"200": _json("the folder's entries", _ref("FileList")), **_FILE_ERRORS},
    (SANDBOX_ID, _query("path", {"type": "string", "default": "/workspace"}, "the folder")),
)
_UPLOAD = _op(
    "Write a file in a running sandbox (parents are made)",
    {"201": _json("written", _ref("Written")), **_FILE_ERRORS, **TOO_LARGE},
    (SANDBOX_ID, FILE_PATH),
    {"required": True,
     "content": {"application/octet-stream": {"schema": {"type": "string",
                                                         "format": "binary"}}}},
)
_DOWNLOAD = _op(
    "Read a file from a running sandbox",
    {"200": {"description": "the file's bytes",
             "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                 "format": "binary"}}}},
     **_FILE_ERRORS, **TOO_LARGE},
    (SANDBOX_ID, FILE_PATH),
)

CONTEXT_ID = {"name": "context_id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}
NO_CONTEXT = {"404": _error("no sandbox with this id, or no context with this id in it")}
_CONTEXT_ERRORS = {**BAD_REQUEST, **NO_CONTEXT, **WRONG_STATE, **AT_CAPACITY,
                   **RUNTIME_FAILED}
_CREATE_CONTEXT = _op(
    "Start a code context: a persistent interpreter whose variables live from cell to cell "
    "and across a suspend and restore of the sandbox",
    {"201": _json("the context", _ref("Context")), **_CONTEXT_ERRORS, **TOO_LARGE},
    (SANDBOX_ID,),
    {"required": False, "content": {"application/json": {"schema": _ref("CreateContext")}}},
)
_LIST_CONTEXTS = _op("The sandbox's code contexts, oldest first",
                     {"200": _json("the contexts", _ref("ContextList")), **_CONTEXT_ERRORS},
                     (SANDBOX_ID,))
_DELETE_CONTEXT = _op("End a code context",
                      {"200": _json("deleted", _ref("ContextDeleted")), **_CONTEXT_ERRORS},
                      (SANDBOX_ID, CONTEXT_ID))
_RUN_CELL = _op(
    "Run a cell in a code context; results come back as Jupyter MIME bundles",
    {"200": {"description": "the cell's answer; with stream=true, NDJSON events",
             "content": {"application/json": {"schema": _ref("CellRun")},
                         "application/x-ndjson": {"schema": _ref("CellEvent")}}},
     **_CONTEXT_ERRORS, **TOO_LARGE},
    (SANDBOX_ID, CONTEXT_ID, STREAM),
    {"required": True, "content": {"application/json": {"schema": _ref("RunCell")}}},
)
_INTERRUPT = _op("Interrupt the running cell (KeyboardInterrupt); the context lives on",
                 {"200": _json("interrupted (nothing, when no cell ran)", {
                     "type": "object", "properties": {"context_id": {"type": "string"},
                                                      "interrupted": {"const": True}}}),
                  **_CONTEXT_ERRORS}, (SANDBOX_ID, CONTEXT_ID))
_RESTART = _op("Start the context's interpreter afresh: its variables are gone",
               {"200": _json("restarted", {
                   "type": "object", "properties": {"context_id": {"type": "string"},
                                                    "restarted": {"const": True}}}),
                **_CONTEXT_ERRORS}, (SANDBOX_ID, CONTEXT_ID))

_NULLABLE_INT = {"type": ["integer", "null"]}
_BUNDLE = {
    "type": "object", "description": "a MIME bundle as Jupyter makes it: text/plain always; "
    "text/html (DataFrames), text/markdown, text/latex, image/svg+xml as text; image/png and "
    "image/jpeg in base64; application/json as a JSON value",
    "required": ["text/plain", "is_main_result", "truncated"],
    "properties": {
        "text/plain": {"type": "string"}, "text/html": {"type": "string"},
        "text/markdown": {"type": "string"}, "text/latex": {"type": "string"},
        "image/svg+xml": {"type": "string"},
        "image/png": {"type": "string", "contentEncoding": "base64"},
        "image/jpeg": {"type": "string", "contentEncoding": "base64"},
        "application/json": {},
        "is_main_result": {"type": "boolean",
                           "description": "the value of the cell's last expression"},
        "truncated": {"type": "boolean",
                      "description": "representations left out or text cut to fit the cap"}}}
_CELL_SUMMARY = {
    "context_id": {"type": "string"}, "execution_count": _NULLABLE_INT,
    "timed_out": {"type": "boolean"},
    "restarted": {"type": "boolean",
                  "description": "the interpreter was started afresh: variables are gone"},
    "stdout_truncated": {"type": "boolean"}, "stderr_truncated": {"type": "boolean"},
    "results_truncated": {"type": "boolean"}, "duration_ms": {"type": "integer"}}
_ENV = {"type": "object", "maxProperties": 64,
        "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "additionalProperties": {"type": "string"}}
SCHEMAS: Schema = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
    "State": {"type": "string",
              "enum": ["creating", "running", "exited", "suspended", "failed"]},
    "Sandbox": {"type": "object", "properties": {
        "sandbox_id": {"type": "string"}, "kind": {"enum": ["script", "session"]},
        "state": _ref("State"), "language": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "exit_code": _NULLABLE_INT, "reason": {"type": "string"},
        "reason_code": {"enum": [*(code.value for code in ReasonCode), None]},
        "idle_timeout_s": {"type": ["number", "null"]},
        "limits": {"type": "object", "additionalProperties": {"type": "number"}},
        "network": _ref("Network")}},
    "Network": {"type": "object", "additionalProperties": False, "properties": {
        "allow": {"type": "array", "items": {"type": "string"}, "maxItems": 100,
                  "description": "hosts the sandbox may reach through the egress proxy: "
                                 "name, *.domain or name:port (443 and 80 by default), "
                                 "within the server's SANDBOX_EGRESS_ALLOW"}}},
    "SandboxList": {"type": "object", "properties": {
        "sandboxes": {"type": "array", "items": _ref("Sandbox")}}},
    "Deleted": {"type": "object", "properties": {
        "sandbox_id": {"type": "string"}, "deleted": {"const": True}}},
    "ExecutionResult": {"type": "object", "properties": {
        "sandbox_id": {"type": "string"}, "language": {"type": "string"},
        "exit_code": _NULLABLE_INT, "timed_out": {"type": "boolean"},
        "oom_killed": {"type": "boolean"}, "stdout": {"type": "string"},
        "stderr": {"type": "string"}, "stdout_truncated": {"type": "boolean"},
        "stderr_truncated": {"type": "boolean"}, "duration_ms": {"type": "integer"}}},
    "Event": {"type": "object", "description": "one NDJSON line", "required": ["type"],
              "properties": {
                  "type": {"enum": ["start", "stdout", "stderr", "exit", "state", "deleted",
                                    "error"]},
                  "sandbox_id": {"type": "string"}, "data": {"type": "string"}}},
    "Output": {"type": "object", "properties": {
        "sandbox_id": {"type": "string"}, "state": _ref("State"), "exit_code": _NULLABLE_INT,
        "stdout": {"type": "string"}, "stderr": {"type": "string"},
        "stdout_truncated": {"type": "boolean"}, "stderr_truncated": {"type": "boolean"}}},
    "CreateSandbox": {"type": "object", "additionalProperties": False, "properties": {
        "language": {**LANGUAGE, "default": "python"},
        "timeout": {"type": "number", "description": "seconds per exec"},
        "memory_mb": {"type": "integer"},
        "env": _ENV,
        "idle_timeout": {"type": "number",
                         "description": "seconds without calls before it is suspended"},
        "packages": {"type": "array", "items": {"type": "string"}, "maxItems": 100,
                     "description": "requirements (Python only) installed for every exec"},
        "network": _ref("Network")}},
    "ExecRequest": {"type": "object", "additionalProperties": False, "properties": {
        "language": LANGUAGE, "code": {"type": "string"},
        "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                 "maxItems": 256},
        "stdin": {"type": "string"}, "timeout": {"type": "number"},
        "env": {**_ENV, "description": "added to the sandbox's own variables, winning over them"},
        "cwd": {"type": "string", "minLength": 1,
                "description": "working directory; relative to /workspace (the default)"}},
        "oneOf": [{"required": ["language", "code"]}, {"required": ["argv"]}]},
    "FileList": {"type": "object", "properties": {
        "path": {"type": "string"}, "entries": {"type": "array", "items": {
            "type": "object", "properties": {
                "name": {"type": "string"},
                "kind": {"enum": ["file", "directory", "link", "other"]},
                "size": {"type": "integer"},
                "modified_at": {"type": "string", "format": "date-time"}}}}}},
    "Context": {"type": "object", "properties": {
        "context_id": {"type": "string"}, "language": {"enum": ["python"]},
        "created_at": {"type": "string", "format": "date-time"}}},
    "ContextList": {"type": "object", "properties": {
        "contexts": {"type": "array", "items": _ref("Context")}}},
    "ContextDeleted": {"type": "object", "properties": {
        "context_id": {"type": "string"}, "deleted": {"const": True}}},
    "CreateContext": {"type": "object", "additionalProperties": False, "properties": {
        "language": {"enum": ["python"], "default": "python"}}},
    "RunCell": {"type": "object", "additionalProperties": False, "required": ["code"],
                "properties": {"code": {"type": "string"},
                               "timeout": {"type": "number", "exclusiveMinimum": 0,
                                           "description": "seconds; then the cell is "
                                           "interrupted (default: the sandbox's timeout)"}}},
    "CellResult": _BUNDLE,
    "CellError": {"type": "object", "properties": {
        "name": {"type": "string", "description": "the exception's class (TimeoutError, "
                 "ContextDied when the service ended it)"},
        "value": {"type": "string"}, "traceback": {"type": "string"}}},
    "CellRun": {"type": "object", "properties": {
        **_CELL_SUMMARY, "results": {"type": "array", "items": _ref("CellResult")},
        "stdout": {"type": "string"}, "stderr": {"type": "string"},
        "error": {"oneOf": [{"type": "null"}, _ref("CellError")]}}},
    "CellEvent": {"type": "object", "description": "one NDJSON line: start; stdout and "
                  "stderr (data); result (a bundle beside type); error (the cell's: name, "
                  "value, traceback; the service's: error); end (the summary)",
                  "required": ["type"], "properties": {
                      "type": {"enum": ["start", "stdout", "stderr", "result", "error",
                                        "end"]},
                      "data": {"type": "string"}, **_CELL_SUMMARY}},
    "Written": {"type": "object", "properties": {
        "path": {"type": "string"}, "size": {"type": "integer"}}},
    "Status": {"type": "object", "properties": {
        "status": {"type": "string"}, "problems": {"type": "array",
                                                   "items": {"type": "string"}},
        # /readyz: for each limit, the layers that hold it on this host (empty: none).
        "limits": {"type": "object", "additionalProperties": {
            "type": "array", "items": {"type": "string"}}}}},
}

DOCUMENT: Schema = {
    "openapi": "3.1.0",
    "info": {"title": "gVisor sandbox", "version": "0.1.0",
             "description": "Run untrusted Python and Bash in gVisor sandboxes."},
    "paths": {
        "/execute": {"post": _EXECUTE},
        "/list": {"get": _LIST},
        "/suspend/{sandbox_id}": {"get": _SUSPEND, "post": _SUSPEND},
        "/restore/{sandbox_id}": {"get": _RESTORE, "post": _RESTORE},
        "/delete/{sandbox_id}": {"get": _DELETE, "post": _DELETE},
        "/sandboxes": {"get": _LIST, "post": _CREATE},
        "/sandboxes/{sandbox_id}": {
            "get": _op("Inspect a sandbox", {**RECORD, **BAD_REQUEST, **NOT_FOUND},
                       (SANDBOX_ID,)),
            "delete": _DELETE},
        "/sandboxes/{sandbox_id}/exec": {"post": _EXEC},
        "/sandboxes/{sandbox_id}/suspend": {"post": _SUSPEND},
        "/sandboxes/{sandbox_id}/restore": {"post": _RESTORE},
        "/sandboxes/{sandbox_id}/output": {"get": _OUTPUT},
        "/sandboxes/{sandbox_id}/files": {"get": _LIST_FILES},
        "/sandboxes/{sandbox_id}/files/{path}": {"get": _DOWNLOAD, "put": _UPLOAD},
        "/sandboxes/{sandbox_id}/contexts": {"get": _LIST_CONTEXTS, "post": _CREATE_CONTEXT},
        "/sandboxes/{sandbox_id}/contexts/{context_id}": {"delete": _DELETE_CONTEXT},
        "/sandboxes/{sandbox_id}/contexts/{context_id}/run": {"post": _RUN_CELL},
        "/sandboxes/{sandbox_id}/contexts/{context_id}/interrupt": {"post": _INTERRUPT},
        "/sandboxes/{sandbox_id}/contexts/{context_id}/restart": {"post": _RESTART},
        "/healthz": {"get": _op("Liveness", {"200": _json("alive", _ref("Status"))})},
        "/readyz": {"get": _op("Readiness: the runtime can run sandboxes now", {
            "200": _json("ready", _ref("Status")),
            "503": _json("not ready, with the problems", _ref("Status"))})},
        "/metrics": {"get": _op("Metrics in Prometheus's text format", {"200": {
            "description": "the exposition", "content": {"text/plain": {}}}, **BAD_REQUEST})},
        "/openapi.json": {"get": _op("This document", {"200": {
            "description": "OpenAPI 3.1", "content": {"application/json": {}}}})},
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "one of the server's SANDBOX_API_TOKENS, when it has any"}},
    },
    "security": [{"bearer": []}],
}


def _secure(document: Schema) -> None:
    """Every call but the liveness probe needs the token: each may answer 401. Every call
    refuses foreign web origins (and all but /healthz foreign hosts): each may answer 403."""
    for path, item in document["paths"].items():
        for operation in item.values():
            operation["responses"]["403"] = FORBIDDEN
            if path == "/healthz":
                operation["security"] = []
            else:
                operation["responses"]["401"] = UNAUTHORIZED


_secure(DOCUMENT)


async def serve_openapi(request: Request) -> Response:
    return JSONResponse(DOCUMENT)
