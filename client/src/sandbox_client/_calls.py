"""The requests of the API, built once for both clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from sandbox_client._http import Call
from sandbox_client.config import PACKAGE_INSTALL_WAIT_S, ConnectionConfig, execution_wait

Code = str | bytes
Packages = Sequence[str] | str | None
TEXT = {"Content-Type": "text/plain; charset=utf-8"}
BINARY = {"Content-Type": "application/octet-stream"}


def _segment(value: str) -> str:
    # "." and ".." would be resolved by the URL itself (httpx removes dot segments): sent
    # encoded, they reach the server as the names they are.
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe="")


def sandbox_url(sandbox_id: str, suffix: str = "") -> str:
    return f"/sandboxes/{_segment(sandbox_id)}{suffix}"


def context_url(sandbox_id: str, context_id: str, suffix: str = "") -> str:
    return sandbox_url(sandbox_id, f"/contexts/{_segment(context_id)}{suffix}")


def file_url(sandbox_id: str, path: str) -> str:
    return sandbox_url(sandbox_id, "/files/" + "/".join(_segment(part) for part in path.split("/")))


def package_list(packages: Packages) -> list[str]:
    if packages is None:
        return []
    if isinstance(packages, str):
        return [part.strip() for part in packages.split(",") if part.strip()]
    return list(packages)


def _encoded(code: Code) -> bytes:
    return code.encode() if isinstance(code, str) else code


def _given(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def execute(
    config: ConnectionConfig, code: Code, language: str, *, packages: Packages = None,
    timeout: float | None = None, memory_mb: int | None = None, template: str | None = None,
    stream: bool = False, detach: bool = False,
) -> Call:
    wanted = package_list(packages)
    params = _given(language=language, timeout=_number(timeout), memory_mb=_number(memory_mb),
                    packages=",".join(wanted) or None, template=template,
                    stream="true" if stream else None, detach="true" if detach else None)
    work = (PACKAGE_INSTALL_WAIT_S if wanted else 0.0) if detach else execution_wait(
        timeout, wanted)
    return Call("POST", "/execute", params=params, content=_encoded(code), headers=TEXT,
                timeout=config.timeout(work))


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:g}"


def create_sandbox(
    config: ConnectionConfig, language: str, *, packages: Packages = None,
    memory_mb: int | None = None, timeout: float | None = None,
    env: Mapping[str, str] | None = None, idle_timeout: float | None = None,
    template: str | None = None,
) -> Call:
    wanted = package_list(packages)
    body = _given(language=language, packages=wanted or None, memory_mb=memory_mb,
                  timeout=timeout, env=dict(env) if env else None, idle_timeout=idle_timeout,
                  template=template)
    return Call("POST", "/sandboxes", json=body,
                timeout=config.timeout(PACKAGE_INSTALL_WAIT_S if wanted else 0.0))


def list_sandboxes(state: str | None) -> Call:
    return Call("GET", "/sandboxes", params=_given(state=state))


def exec_command(
    config: ConnectionConfig, sandbox_id: str, command: str | Sequence[str], *,
    language: str | None = None, stdin: str | bytes | None = None,
    env: Mapping[str, str] | None = None, cwd: str | None = None,
    timeout: float | None = None, stream: bool = False,
) -> Call:
    """A string is a script (Bash unless `language` says otherwise); a list is an argv."""
    if isinstance(command, str):
        body: dict[str, Any] = {"language": language or "bash", "code": command}
    else:
        if language is not None:
            raise ValueError("language goes with a script (a string), not with an argv list")
        body = {"argv": list(command)}
    if isinstance(stdin, bytes):
        stdin = stdin.decode("utf-8")  # JSON carries text; binary input goes in as a file
    body.update(_given(stdin=stdin or None, env=dict(env) if env else None, cwd=cwd,
                       timeout=timeout))
    return Call("POST", sandbox_url(sandbox_id, "/exec"), json=body,
                params={"stream": "true"} if stream else None,
                timeout=config.timeout(execution_wait(timeout)))


def output(config: ConnectionConfig, sandbox_id: str, follow: bool) -> Call:
    if not follow:
        return Call("GET", sandbox_url(sandbox_id, "/output"))
    # A detached script may stay silent as long as it runs: no read limit while following.
    return Call("GET", sandbox_url(sandbox_id, "/output"), params={"follow": "true"},
                timeout=config.timeout(None))


def create_context(sandbox_id: str, language: str) -> Call:
    return Call("POST", sandbox_url(sandbox_id, "/contexts"), json={"language": language})


def run_cell(
    config: ConnectionConfig, sandbox_id: str, context_id: str, code: str,
    timeout: float | None, stream: bool,
) -> Call:
    return Call("POST", context_url(sandbox_id, context_id, "/run"),
                json=_given(code=code, timeout=timeout),
                params={"stream": "true"} if stream else None,
                timeout=config.timeout(execution_wait(timeout)))
