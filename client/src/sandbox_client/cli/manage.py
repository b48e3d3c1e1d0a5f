"""Commands that manage sandboxes and templates: ls, info, create, suspend, restore, rm,
snapshot, fork, template ls|rm."""

from __future__ import annotations

import click

from sandbox_client import _calls
from sandbox_client._http import Call, SyncHTTP
from sandbox_client.cli.code import one_call, show_record
from sandbox_client.cli.session import Session, parse_env, pass_session
from sandbox_client.cli.terminal import EXIT_ERROR, info_table, sandbox_table, template_table
from sandbox_client.errors import NotFound
from sandbox_client.models import SandboxInfo
from sandbox_client.sandbox import Sandbox

STATES = ["creating", "running", "suspended", "exited", "failed"]
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")


@click.command("ls")
@click.option("-s", "--state", type=click.Choice(STATES), help="only sandboxes in this state")
@json_option
@pass_session
def list_sandboxes(session: Session, state: str | None, as_json: bool) -> None:
    """List the sandboxes the server knows."""
    found = Sandbox.list(state, config=session.config)
    if as_json:
        session.terminal.print_json({"sandboxes": [info.raw for info in found]})
    elif found:
        session.terminal.out.print(sandbox_table(found))
    else:
        session.terminal.say("no sandboxes", "dim")


@click.command("info")
@click.argument("sandbox_id")
@json_option
@pass_session
def info(session: Session, sandbox_id: str, as_json: bool) -> None:
    """A sandbox's record."""
    with Sandbox.connect(sandbox_id, keep=True, config=session.config) as sandbox:
        record = sandbox.info()
    if as_json:
        session.terminal.print_json(record.raw)
    else:
        session.terminal.out.print(info_table(record))


@click.command("create")
@click.option("-l", "--language", type=click.Choice(["python", "bash"]), default="python",
              show_default=True)
@click.option("-p", "--packages", help="Python requirements, comma-separated")
@click.option("-m", "--memory", "memory_mb", type=int, help="memory limit in MiB")
@click.option("-t", "--timeout", type=float, help="wall-time limit of each exec, seconds")
@click.option("--idle-timeout", type=float, help="seconds without calls before it is suspended")
@click.option("-e", "--env", multiple=True, help="NAME=VALUE for every exec (repeatable)")
@click.option("--template", help="start from this template (see sbx snapshot)")
@json_option
@pass_session
def create(session: Session, language: str, packages: str | None, memory_mb: int | None,
           timeout: float | None, idle_timeout: float | None, env: tuple[str, ...],
           template: str | None, as_json: bool) -> None:
    """Create a long-lived sandbox and print its id."""
    call = _calls.create_sandbox(session.config, language, packages=packages,
                                 memory_mb=memory_mb, timeout=timeout, env=parse_env(env),
                                 idle_timeout=idle_timeout, template=template)
    waiting = "installing packages" if packages else "creating a sandbox"
    with session.terminal.spinner(waiting):
        record = one_call(session, call)
    show_record(session, SandboxInfo.from_dict(record), as_json)


def _each(session: Session, sandbox_ids: tuple[str, ...], act: str, as_json: bool) -> None:
    records = []
    for sandbox_id in sandbox_ids:
        with Sandbox.connect(sandbox_id, keep=True, config=session.config) as sandbox, \
                session.terminal.spinner(f"{act} {sandbox_id}"):
            record = sandbox.suspend() if act == "suspending" else sandbox.resume()
        records.append(record.raw)
        if not as_json:
            click.echo(f"{record.sandbox_id} {record.state}")
    if as_json:
        session.terminal.print_json({"sandboxes": records})


@click.command("suspend")
@click.argument("sandbox_ids", nargs=-1, required=True)
@json_option
@pass_session
def suspend(session: Session, sandbox_ids: tuple[str, ...], as_json: bool) -> None:
    """Suspend sandboxes to disk (memory and all)."""
    _each(session, sandbox_ids, "suspending", as_json)


@click.command("restore")
@click.argument("sandbox_ids", nargs=-1, required=True)
@json_option
@pass_session
def restore(session: Session, sandbox_ids: tuple[str, ...], as_json: bool) -> None:
    """Restore suspended sandboxes: their processes go on where they stopped."""
    _each(session, sandbox_ids, "restoring", as_json)


@click.command("rm")
@click.argument("sandbox_ids", nargs=-1, required=True)
@pass_session
def remove(session: Session, sandbox_ids: tuple[str, ...]) -> None:
    """Delete sandboxes and all they left."""
    missing = 0
    http = SyncHTTP(session.config)
    try:
        for sandbox_id in sandbox_ids:
            try:
                http.send(Call("DELETE", _calls.sandbox_url(sandbox_id)))
            except NotFound:
                missing += 1
                session.terminal.error(f"no sandbox {sandbox_id}")
                continue
            click.echo(f"{sandbox_id} deleted")
    finally:
        http.close()
    if missing:
        raise click.exceptions.Exit(EXIT_ERROR)


@click.command("snapshot")
@click.argument("sandbox_id")
@json_option
@pass_session
def snapshot(session: Session, sandbox_id: str, as_json: bool) -> None:
    """Keep a sandbox's state as a template; print the template's id."""
    with Sandbox.connect(sandbox_id, keep=True, config=session.config) as sandbox, \
            session.terminal.spinner(f"snapshotting {sandbox_id}"):
        template = sandbox.snapshot()
    if as_json:
        session.terminal.print_json(template.raw)
    else:
        click.echo(template.template_id)


@click.command("fork")
@click.argument("sandbox_id")
@click.option("-n", "--count", type=click.IntRange(1), default=1, show_default=True)
@json_option
@pass_session
def fork(session: Session, sandbox_id: str, count: int, as_json: bool) -> None:
    """New sandboxes going on from a sandbox's state; print their ids."""
    call = Call("POST", _calls.sandbox_url(sandbox_id, "/fork"), json={"count": count})
    with session.terminal.spinner(f"forking {sandbox_id}"):
        records = [SandboxInfo.from_dict(record)
                   for record in one_call(session, call).get("sandboxes", [])]
    if as_json:
        session.terminal.print_json({"sandboxes": [record.raw for record in records]})
    for record in [] if as_json else records:
        click.echo(record.sandbox_id)


@click.group("template")
def template() -> None:
    """Templates kept by sbx snapshot."""


@template.command("ls")
@json_option
@pass_session
def list_templates(session: Session, as_json: bool) -> None:
    """List the templates."""
    found = Sandbox.list_templates(config=session.config)
    if as_json:
        session.terminal.print_json({"templates": [item.raw for item in found]})
    elif found:
        session.terminal.out.print(template_table(found))
    else:
        session.terminal.say("no templates", "dim")


@template.command("rm")
@click.argument("template_ids", nargs=-1, required=True)
@pass_session
def remove_templates(session: Session, template_ids: tuple[str, ...]) -> None:
    """Delete templates."""
    for template_id in template_ids:
        try:
            Sandbox.delete_template(template_id, config=session.config)
        except NotFound:
            session.terminal.error(f"no template {template_id}")
            raise click.exceptions.Exit(EXIT_ERROR) from None
        click.echo(f"{template_id} deleted")


COMMANDS = (list_sandboxes, info, create, suspend, restore, remove, snapshot, fork, template)
