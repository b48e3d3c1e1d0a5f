"""Commands that run code: `run`, `exec`, and `logs` of a detached script. Output is
streamed as it comes; sbx exits with the code's own exit status."""

from __future__ import annotations

import sys
from pathlib import PurePath
from typing import Any, BinaryIO, NoReturn

import click

from sandbox_client import _calls
from sandbox_client._events import CommandEvents, events
from sandbox_client._http import Call, SyncHTTP, translated_errors
from sandbox_client.cli.session import Session, parse_env, pass_session
from sandbox_client.cli.terminal import ENDED_WITHOUT_CODE, exit_status, verdict
from sandbox_client.models import CommandResult, SandboxInfo
from sandbox_client.oneshot import run as run_once
from sandbox_client.sandbox import Sandbox

LANGUAGES = {".py": "python", ".sh": "bash", ".bash": "bash"}
INTERRUPTED = 130  # as a shell says a command ended by Ctrl-C


def language_of(name: str, given: str | None) -> str:
    if given is not None:
        return given
    language = LANGUAGES.get(PurePath(name).suffix.lower())
    if language is None:
        raise click.UsageError(f"cannot tell the language of {name!r}: give --language")
    return language


def streamed(session: Session, call: Call, waiting: str) -> CommandResult:
    """The call's events, output written as it arrives; a spinner until the code starts."""
    terminal = session.terminal
    collector = CommandEvents(lambda text: terminal.write(text, "stdout"),
                              lambda text: terminal.write(text, "stderr"))
    http = SyncHTTP(session.config)
    try:
        with terminal.spinner(waiting), http.stream(call) as response, \
                translated_errors(session.config.url):
            for event in events(response.iter_bytes()):
                if event["type"] == "start":
                    terminal.stop_spinner()
                collector.feed(event)
    except KeyboardInterrupt:
        # Leaving closes the stream: the server ends the code.
        terminal.say("interrupted: the code was ended", "dim")
        raise click.exceptions.Exit(INTERRUPTED) from None
    finally:
        http.close()
    return collector.result()


def finish(session: Session, result: CommandResult, as_json: bool) -> NoReturn:
    if as_json:
        session.terminal.print_json(result.raw)
    note = verdict(result)
    if note is not None:
        session.terminal.say(f"sbx: {note}", "yellow")
    raise click.exceptions.Exit(exit_status(result))


@click.command("run")
@click.argument("file", type=click.File("rb"))
@click.option("-l", "--language", type=click.Choice(["python", "bash"]),
              help="the script's language (default: from the file's extension)")
@click.option("-p", "--packages", help="Python requirements, comma-separated")
@click.option("-t", "--timeout", type=float, help="wall-time limit in seconds")
@click.option("-m", "--memory", "memory_mb", type=int, help="memory limit in MiB")
@click.option("--template", help="start from this template (see sbx snapshot)")
@click.option("-d", "--detach", is_flag=True,
              help="start it, print its sandbox id and return; follow with sbx logs -f")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@pass_session
def run(session: Session, file: BinaryIO, language: str | None, packages: str | None,
        timeout: float | None, memory_mb: int | None, template: str | None, detach: bool,
        as_json: bool) -> None:
    """Run FILE (- for stdin) in a fresh sandbox and exit with its exit code."""
    language = language_of(str(getattr(file, "name", "-")), language)
    source = file.read()
    waiting = "installing packages" if packages else "starting a sandbox"
    if detach:
        call = _calls.execute(session.config, source, language, packages=packages,
                              timeout=timeout, memory_mb=memory_mb, template=template,
                              detach=True)
        with session.terminal.spinner(waiting):
            record = one_call(session, call)
        show_record(session, SandboxInfo.from_dict(record), as_json)
        return
    if as_json:
        with session.terminal.spinner(waiting):
            result = run_once(source, language, packages=packages, timeout=timeout,
                              memory_mb=memory_mb, template=template, config=session.config)
    else:
        call = _calls.execute(session.config, source, language, packages=packages,
                              timeout=timeout, memory_mb=memory_mb, template=template,
                              stream=True)
        result = streamed(session, call, waiting)
    finish(session, result, as_json)


def one_call(session: Session, call: Call) -> dict[str, Any]:
    http = SyncHTTP(session.config)
    try:
        return http.json(call)
    finally:
        http.close()


def show_record(session: Session, info: SandboxInfo, as_json: bool) -> None:
    """A new sandbox: its id alone (for `ID=$(sbx ...)`), or its record as JSON."""
    if as_json:
        session.terminal.print_json(info.raw)
    else:
        click.echo(info.sandbox_id)


@click.command("exec")
@click.argument("sandbox_id")
@click.argument("command", nargs=-1, required=True)
@click.option("-e", "--env", multiple=True, help="NAME=VALUE for the command (repeatable)")
@click.option("-w", "--cwd", help="working folder (default /workspace)")
@click.option("-t", "--timeout", type=float, help="wall-time limit in seconds")
@click.option("-i", "--stdin", "with_stdin", is_flag=True,
              help="give sbx's standard input to the command")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@pass_session
def exec_(session: Session, sandbox_id: str, command: tuple[str, ...], env: tuple[str, ...],
          cwd: str | None, timeout: float | None, with_stdin: bool, as_json: bool) -> None:
    """Run COMMAND (after --) in sandbox SANDBOX_ID and exit with its exit code."""
    stdin = sys.stdin.read() if with_stdin else None
    call = _calls.exec_command(session.config, sandbox_id, list(command), stdin=stdin,
                               env=parse_env(env), cwd=cwd, timeout=timeout,
                               stream=not as_json)
    if as_json:
        result = CommandResult.from_dict(one_call(session, call))
    else:
        result = streamed(session, call, "waiting for the sandbox")
    finish(session, result, as_json)


@click.command("logs")
@click.argument("sandbox_id")
@click.option("-f", "--follow", is_flag=True,
              help="stream the output until the script stops, then exit with its code")
@click.option("--json", "as_json", is_flag=True, help="print the output as JSON")
@pass_session
def logs(session: Session, sandbox_id: str, follow: bool, as_json: bool) -> None:
    """What a detached script printed."""
    terminal = session.terminal
    with Sandbox.connect(sandbox_id, keep=True, config=session.config) as sandbox:
        if not follow:
            output = sandbox.logs()
        else:
            try:
                output = sandbox.logs(follow=True, on_stdout=terminal.write,
                                      on_stderr=lambda text: terminal.write(text, "stderr"))
            except KeyboardInterrupt:
                raise click.exceptions.Exit(INTERRUPTED) from None
    if as_json:
        terminal.print_json(output.__dict__)
    elif not follow:
        terminal.write(output.stdout)
        terminal.write(output.stderr, "stderr")
    if not follow:
        return
    if output.state != "exited" or output.exit_code is None:
        why = f": {output.reason}" if output.reason else ""
        terminal.say(f"sbx: the sandbox is {output.state}{why}", "yellow")
    raise click.exceptions.Exit(ENDED_WITHOUT_CODE if output.exit_code is None
                                else output.exit_code)


COMMANDS = (run, exec_, logs)
