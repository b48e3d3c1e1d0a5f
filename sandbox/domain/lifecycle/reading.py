"""Reading sandboxes: their records, and the output of detached scripts."""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator

from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Sandbox, SandboxState, Stream
from sandbox.domain.ports import StoredOutput


async def get_sandbox(sandboxes: Sandboxes, sandbox_id: str) -> Sandbox:
    return await sandboxes.get(sandbox_id)


async def list_sandboxes(
    sandboxes: Sandboxes, state: SandboxState | None = None
) -> list[Sandbox]:
    return await sandboxes.store.list(state)


async def read_output(
    sandboxes: Sandboxes, sandbox_id: str
) -> tuple[Sandbox, StoredOutput, StoredOutput]:
    sandbox = await sandboxes.get(sandbox_id)
    stdout = await sandboxes.outputs.read(sandbox.sandbox_id, Stream.STDOUT)
    stderr = await sandboxes.outputs.read(sandbox.sandbox_id, Stream.STDERR)
    return sandbox, stdout, stderr


async def follow_output(
    sandboxes: Sandboxes, sandbox_id: str, poll_s: float = 0.2
) -> AsyncIterator[dict[str, object]]:
    """Events of the output as it grows, until the sandbox stops running."""
    sandbox = await sandboxes.get(sandbox_id)
    yield {"type": "start", "sandbox_id": sandbox.sandbox_id}
    readers = {stream: _IncrementalText() for stream in Stream}
    while True:
        current = await sandboxes.store.get(sandbox.sandbox_id)
        for stream, reader in readers.items():
            chunk = await sandboxes.outputs.read(sandbox.sandbox_id, stream, reader.offset)
            if text := reader.feed(chunk):
                yield {"type": stream.value, "data": text}
        if current is None:
            yield {"type": "deleted", "sandbox_id": sandbox.sandbox_id}
            return
        if current.state not in (SandboxState.CREATING, SandboxState.RUNNING):
            yield {"type": "exit" if current.state is SandboxState.EXITED else "state",
                   **current.to_dict()}
            return
        await asyncio.sleep(poll_s)


class _IncrementalText:
    """Turns growing stored bytes into text, holding back a split multi-byte character."""

    def __init__(self) -> None:
        self.offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: StoredOutput) -> str:
        self.offset += len(chunk.data)
        return self._decoder.decode(chunk.data)
