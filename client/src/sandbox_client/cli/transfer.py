"""`sbx cp`: files in and out of a sandbox, a chunk at a time."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from sandbox_client.cli.session import Session, pass_session
from sandbox_client.sandbox import Sandbox

# A sandbox id is 24 hex digits: "ID:PATH" is never a local path such as "C:notes".
REMOTE = re.compile(r"\A(?P<sandbox_id>[0-9a-f]{24}):(?P<path>.+)\Z", re.DOTALL)
STDIO = "-"


@dataclass(frozen=True)
class Remote:
    sandbox_id: str
    path: str


def parse(location: str) -> Remote | None:
    found = REMOTE.match(location)
    return Remote(found["sandbox_id"], found["path"]) if found else None


def _remote_target(remote: Remote, local_name: str) -> str:
    """A folder (ending in /) receives the file under its own name."""
    return remote.path + local_name if remote.path.endswith("/") else remote.path


def _local_target(local: str, remote_path: str) -> Path:
    target = Path(local)
    return target / Path(remote_path).name if target.is_dir() else target


@click.command("cp")
@click.argument("source")
@click.argument("target")
@pass_session
def copy(session: Session, source: str, target: str) -> None:
    """Copy LOCAL to ID:PATH, or ID:PATH to LOCAL (- is stdin or stdout). Relative sandbox
    paths start at /workspace; a path ending in / is a folder."""
    remote_source, remote_target = parse(source), parse(target)
    if (remote_source is None) == (remote_target is None):
        raise click.UsageError("give one side as ID:PATH (the sandbox) and the other local")
    remote = remote_source or remote_target
    assert remote is not None
    with Sandbox.connect(remote.sandbox_id, keep=True, config=session.config) as sandbox, \
            session.terminal.spinner("copying"):
        if remote_target is not None:
            _upload(sandbox, source, remote_target)
        else:
            _download(sandbox, remote, target)


def _upload(sandbox: Sandbox, source: str, remote: Remote) -> None:
    if source == STDIO:
        sandbox.files.write(_remote_target(remote, "stdin"), sys.stdin.buffer.read())
        return
    local = Path(source)
    if not local.is_file():
        raise click.BadParameter(f"{source} is not a file", param_hint="SOURCE")
    sandbox.files.upload(local, _remote_target(remote, local.name))


def _download(sandbox: Sandbox, remote: Remote, target: str) -> None:
    if target == STDIO:
        sys.stdout.buffer.write(sandbox.files.read(remote.path, format="bytes"))
        sys.stdout.buffer.flush()
        return
    sandbox.files.download(remote.path, _local_target(target, remote.path))


COMMANDS = (copy,)
