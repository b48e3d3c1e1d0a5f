"""What sbx shows: tables for people, JSON for scripts, a spinner only on a terminal."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text

from sandbox_client.config import ConnectionConfig
from sandbox_client.models import CommandResult, SandboxInfo, Template

# Exit statuses of sbx itself; a command that runs code exits with the code's own.
EXIT_ERROR = 1
TIMED_OUT = 124  # as timeout(1) says it
ENDED_WITHOUT_CODE = 125
PIPED_WIDTH = 250


@dataclass
class Terminal:
    """The consoles of one sbx run; stdout carries data, stderr everything said to people."""

    # Piped, a table keeps its full width (rich would cut it to 80 columns).
    out: Console = field(default_factory=lambda: Console(
        highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False,
                                                         soft_wrap=True))
    _spinner: Status | None = None

    @property
    def interactive(self) -> bool:
        return self.err.is_terminal

    def say(self, message: str, style: str = "") -> None:
        self.err.print(Text(message, style=style))

    def error(self, message: str) -> None:
        self.err.print(Text.assemble(("error", "bold red"), ": ", message))

    def print_json(self, data: Any) -> None:
        # Plain print: JSON for scripts must not be wrapped or coloured.
        print(json.dumps(data, indent=2, ensure_ascii=False), flush=True)

    def write(self, text: str, stream: str = "stdout") -> None:
        """Output of code, as it came, unstyled."""
        self.stop_spinner()
        target = sys.stdout if stream == "stdout" else sys.stderr
        target.write(text)
        target.flush()

    @contextlib.contextmanager
    def spinner(self, message: str) -> Iterator[None]:
        """A spinner on stderr while waiting, on a terminal only (none when piped)."""
        if not self.interactive:
            yield
            return
        self._spinner = self.err.status(Text(message))
        self._spinner.start()
        try:
            yield
        finally:
            self.stop_spinner()

    def update_spinner(self, message: str) -> None:
        if self._spinner is not None:
            self._spinner.update(Text(message))
        elif self.interactive:
            self.say(message, "dim")

    def stop_spinner(self) -> None:
        if self._spinner is not None:
            self._spinner.stop()
            self._spinner = None

    def retry_hook(self, config: ConnectionConfig) -> ConnectionConfig:
        """The configuration with 429 waits shown (on a terminal)."""
        def waiting(wait_s: float, reason: str) -> None:
            self.update_spinner(f"at capacity ({reason}); trying again in {wait_s:g} s")

        return dataclasses.replace(config, on_retry=waiting)


def sandbox_table(sandboxes: Sequence[SandboxInfo]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("ID", "STATE", "KIND", "LANGUAGE", "MEMORY", "CREATED", "REASON"):
        table.add_column(column, no_wrap=column != "REASON")
    for info in sandboxes:
        memory = f"{info.limits.memory_mb} MiB" if info.limits.memory_mb else ""
        table.add_row(info.sandbox_id, _state(info.state), info.kind, info.language or "",
                      memory, _when(info.created_at), info.reason)
    return table


def info_table(info: SandboxInfo) -> Table:
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows: dict[str, str | Text] = {
            "id": info.sandbox_id, "state": _state(info.state), "kind": info.kind,
            "language": info.language or "", "created": _when(info.created_at),
            "updated": _when(info.updated_at), "exit code": _text(info.exit_code),
            "reason": info.reason, "idle timeout": _seconds(info.idle_timeout_s),
            "time limit": _seconds(info.limits.timeout_s),
            "memory": f"{info.limits.memory_mb} MiB" if info.limits.memory_mb else ""}
    for name, value in rows.items():
        table.add_row(name, value)
    return table


def template_table(templates: Sequence[Template]) -> Table:
    table = Table(box=None, header_style="bold")
    table.add_column("TEMPLATE")
    table.add_column("CREATED")
    table.add_column("FROM")
    for template in templates:
        table.add_row(template.template_id, _when(template.created_at),
                      str(template.raw.get("sandbox_id", "")))
    return table


def exit_status(result: CommandResult) -> int:
    """The script's own exit code; 124 when it timed out (as timeout(1)), 125 when it was
    ended without one."""
    if result.exit_code is not None:
        return result.exit_code if 0 <= result.exit_code <= 255 else EXIT_ERROR
    return TIMED_OUT if result.timed_out else ENDED_WITHOUT_CODE


def verdict(result: CommandResult) -> str | None:
    """What a person should know about how it ended, beyond its output."""
    notes = []
    if result.timed_out:
        notes.append("timed out")
    if result.oom_killed:
        notes.append("killed: out of memory")
    if result.stdout_truncated or result.stderr_truncated:
        notes.append("output truncated by the server")
    return "; ".join(notes) or None


def _state(state: str) -> Text:
    colours = {"running": "green", "suspended": "yellow", "failed": "red", "exited": "dim"}
    return Text(state, style=colours.get(state, ""))


def _when(moment: datetime.datetime | None) -> str:
    return "" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:g} s"


def _text(value: object) -> str:
    return "" if value is None else str(value)
