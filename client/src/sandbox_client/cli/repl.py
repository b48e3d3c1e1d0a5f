"""`sbx repl ID`: a Python code context of a sandbox at a prompt. Variables live from line to
line (and across a suspend of the sandbox); figures are saved to files.

The prompt is the standard library's own interactive console (`code.InteractiveConsole`):
it decides when a statement is complete, as `python` does, and each complete one is run as
a cell in the sandbox instead of here.
"""

from __future__ import annotations

import base64
import code
from pathlib import Path

import click

from sandbox_client.cli.session import Session, pass_session
from sandbox_client.cli.terminal import Terminal
from sandbox_client.models import Execution, Result
from sandbox_client.sandbox import Context, Sandbox

# Figures and drawings, saved under these extensions; base64 unless said otherwise.
SAVED_FORMATS = {"image/png": ".png", "image/jpeg": ".jpg", "image/svg+xml": ".svg"}
TEXT_FORMATS = {"image/svg+xml"}


class SandboxConsole(code.InteractiveConsole):
    def __init__(self, context: Context, terminal: Terminal, plots: Path) -> None:
        super().__init__(filename="<sandbox>")
        self.context, self.terminal, self.plots = context, terminal, plots
        self.saved: list[Path] = []

    def runsource(self, source: str, filename: str = "<input>", symbol: str = "single") -> bool:
        """True when the statement needs more lines; otherwise it runs in the sandbox."""
        try:
            if self.compile(source, filename, symbol) is None:
                return True
        except (OverflowError, SyntaxError, ValueError):
            pass  # the sandbox's interpreter reports it, as it would any error
        self.run_cell(source)
        return False

    def run_cell(self, source: str) -> None:
        write = self.terminal.write
        try:
            execution = self.context.run(
                source, on_stdout=write, on_stderr=lambda text: write(text, "stderr"))
        except KeyboardInterrupt:
            self.context.interrupt()  # the cell stops; the context and its variables stay
            raise
        self.show(execution)

    def show(self, execution: Execution) -> None:
        for index, result in enumerate(execution.results):
            saved = self.save(result, execution.execution_count, index)
            if saved is not None:
                self.terminal.say(f"[figure saved to {saved}]", "cyan")
            elif result.text is not None:
                self.terminal.write(result.text + "\n")
        if execution.error is not None:
            error = execution.error
            self.terminal.write((error.traceback or f"{error.name}: {error.value}") + "\n",
                                "stderr")

    def save(self, result: Result, count: int | None, index: int) -> Path | None:
        for mime, extension in SAVED_FORMATS.items():
            data = result.data.get(mime)
            if data is None:
                continue
            self.plots.mkdir(parents=True, exist_ok=True)
            path = self.plots / f"cell-{count if count is not None else 'x'}-{index}{extension}"
            content = str(data).encode() if mime in TEXT_FORMATS else base64.b64decode(data)
            path.write_bytes(content)
            self.saved.append(path)
            return path
        return None


@click.command("repl")
@click.argument("sandbox_id")
@click.option("--context", "context_id", help="join this context (default: a new one, "
              "deleted on the way out)")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), default=Path("plots"),
              show_default=True, help="folder for the figures cells make")
@pass_session
def repl(session: Session, sandbox_id: str, context_id: str | None, plots: Path) -> None:
    """A Python prompt in a code context of sandbox SANDBOX_ID (Ctrl-D leaves)."""
    with Sandbox.connect(sandbox_id, keep=True, config=session.config) as sandbox:
        joined = next((context for context in sandbox.list_contexts()
                       if context.context_id == context_id), None) if context_id else None
        if context_id and joined is None:
            raise click.BadParameter(f"no context {context_id} in {sandbox_id}",
                                     param_hint="--context")
        context = joined or sandbox.create_context("python")
        console = SandboxConsole(context, session.terminal, plots)
        try:
            console.interact(
                banner=f"Python context {context.context_id} in sandbox {sandbox_id}; "
                       f"figures go to {plots}/. Ctrl-D leaves.",
                exitmsg="")
        finally:
            if joined is None:
                context.delete()
