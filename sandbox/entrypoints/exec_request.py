"""What `POST /sandboxes/{id}/exec` asks to run, from either of its two body forms.

JSON (`Content-Type: application/json`): `{"language", "code"}` or `{"argv"}`, each with
optional `stdin`, `timeout`, `env` (added to the sandbox's own, winning over it) and `cwd`
(relative to /workspace). Anything else: the body is the script, `?language=` names it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sandbox.domain.errors import InvalidRequest
from sandbox.domain.limits import LimitPolicy
from sandbox.domain.model import Program
from sandbox.entrypoints.env_vars import checked_env
from sandbox.entrypoints.json_body import JsonFields, parse_object
from sandbox.entrypoints.languages import parse_language
from sandbox.entrypoints.paths import sandbox_path
from sandbox.entrypoints.query import optional_float

JSON_FIELDS = ("language", "code", "argv", "stdin", "timeout", "env", "cwd")
MAX_ARGS = 256


@dataclass(frozen=True)
class Command:
    program: Program
    stdin: bytes
    timeout_s: float | None  # None: the sandbox's own per-exec limit


def command_from_json(body: bytes, policy: LimitPolicy) -> Command:
    fields = JsonFields(parse_object(body), JSON_FIELDS)
    if ("code" in fields) == ("argv" in fields):
        raise InvalidRequest("give either code (with language) or argv, not both or neither")
    if "argv" in fields:
        if "language" in fields:
            raise InvalidRequest("language goes with code; argv names its program itself")
        program = Program(language=None, argv=_argv(fields.texts("argv") or []))
    else:
        program = _script(fields.text("language"), (fields.text("code") or "").encode())
    cwd = fields.text("cwd")
    program = dataclasses.replace(
        program, env=checked_env(fields.text_mapping("env") or {}),
        cwd=None if cwd is None else sandbox_path(cwd, "cwd"),
    )
    stdin = (fields.text("stdin") or "").encode()
    return Command(program, stdin, _timeout(fields.number("timeout"), policy))


def command_from_script(query: dict[str, str], body: bytes, policy: LimitPolicy) -> Command:
    program = _script(query.get("language"), body)
    return Command(program, b"", _timeout(optional_float(query, "timeout", "seconds"), policy))


def _script(language: str | None, source: bytes) -> Program:
    parsed = parse_language(language)
    if not source:
        raise InvalidRequest("the script is empty")
    return Program.script(parsed, source)


def _argv(argv: list[str]) -> tuple[str, ...]:
    if not 1 <= len(argv) <= MAX_ARGS:
        raise InvalidRequest(f"argv must hold between 1 and {MAX_ARGS} strings")
    if not argv[0]:
        raise InvalidRequest("argv[0] must name a program")
    return tuple(argv)


def _timeout(timeout_s: float | None, policy: LimitPolicy) -> float | None:
    # The policy checks the value against the same maximum as /execute.
    return None if timeout_s is None else policy.resolve(timeout_s=timeout_s).timeout_s
