"""sbx: the sandbox service from a terminal.

\b
    sbx run script.py                    run a file (or - for stdin), exit with its code
    sbx create --packages pandas         a long-lived sandbox; prints its id
    sbx exec ID -- python3 -c 'print(1)' run a program in it
    sbx cp data.csv ID:data.csv          copy in (and ID:PATH LOCAL out)
    sbx ls | info | logs -f | suspend | restore | snapshot | fork | rm | repl

The server is SANDBOX_URL (or --url), its token SANDBOX_API_TOKEN (or --token).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from sandbox_client.cli import code, manage, repl, transfer
from sandbox_client.cli.session import Session
from sandbox_client.cli.terminal import EXIT_ERROR, Terminal
from sandbox_client.config import ConnectionConfig, connection
from sandbox_client.errors import ConnectionFailed, SandboxError, Unauthorized

HINTS: dict[type[SandboxError], str] = {
    ConnectionFailed: "is the server running? sbx calls SANDBOX_URL (or --url)",
    Unauthorized: "set SANDBOX_API_TOKEN (or --token) to one of the server's tokens",
}


class SbxGroup(click.Group):
    """Errors of the service end sbx with a sentence on stderr, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SandboxError as error:
            terminal = ctx.obj.terminal if isinstance(ctx.obj, Session) else Terminal()
            terminal.stop_spinner()
            terminal.error(f"{error.message} ({error.code})")
            hint = next((text for kind, text in HINTS.items() if isinstance(error, kind)), None)
            if hint:
                terminal.say(hint, "dim")
            raise click.exceptions.Exit(EXIT_ERROR) from error


@click.group(cls=SbxGroup, help=__doc__)
@click.option("--url", help="the server (default: SANDBOX_URL, else http://127.0.0.1:8080)")
@click.option("--token", help="its API token (default: SANDBOX_API_TOKEN)")
@click.option("--request-timeout", type=float, help="seconds a call may take beyond its work")
@click.version_option(package_name="sandbox-client", prog_name="sbx")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None,
        request_timeout: float | None) -> None:
    # Tests hand in a configuration of their own (a server on loopback, a mock transport).
    given = ctx.obj if isinstance(ctx.obj, ConnectionConfig) else None
    config = connection(url, token, given)
    if request_timeout is not None:
        config = dataclasses.replace(config, request_timeout=request_timeout)
    terminal = Terminal()
    ctx.obj = Session(terminal.retry_hook(config), terminal)


for command in (*code.COMMANDS, *manage.COMMANDS, *transfer.COMMANDS, repl.repl):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="sbx")
