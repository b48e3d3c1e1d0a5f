"""What every command of one sbx run shares, handed over by click."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import click

from sandbox_client.cli.terminal import Terminal
from sandbox_client.config import ConnectionConfig

P = ParamSpec("P")
R = TypeVar("R")


@dataclasses.dataclass
class Session:
    config: ConnectionConfig
    terminal: Terminal


def pass_session(command: Callable[Concatenate[Session, P], R]) -> Callable[P, R]:
    return click.make_pass_decorator(Session)(command)


def parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    """NAME=VALUE options as a mapping."""
    env = {}
    for pair in pairs:
        name, sign, value = pair.partition("=")
        if not sign or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--env")
        env[name] = value
    return env
