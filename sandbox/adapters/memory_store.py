"""In-memory store and output log, for unit tests."""

from __future__ import annotations

from sandbox.domain.errors import InvalidState
from sandbox.domain.model import Sandbox, SandboxState, Stream
from sandbox.domain.ports import OutputLog, OutputSink, SandboxStore, StoredOutput


class InMemorySandboxStore(SandboxStore):
    def __init__(self) -> None:
        self.records: dict[str, Sandbox] = {}

    async def add(self, sandbox: Sandbox) -> None:
        if sandbox.sandbox_id in self.records:
            raise InvalidState(f"sandbox {sandbox.sandbox_id} exists already")
        self.records[sandbox.sandbox_id] = sandbox

    async def save(self, sandbox: Sandbox) -> None:
        if sandbox.sandbox_id in self.records:
            self.records[sandbox.sandbox_id] = sandbox

    async def get(self, sandbox_id: str) -> Sandbox | None:
        return self.records.get(sandbox_id)

    async def remove(self, sandbox_id: str) -> None:
        self.records.pop(sandbox_id, None)

    async def list(self, state: SandboxState | None = None) -> list[Sandbox]:
        found = sorted(self.records.values(), key=lambda sandbox: sandbox.created_at)
        return [sandbox for sandbox in found if state is None or sandbox.state is state]


class _MemorySink(OutputSink):
    def __init__(self, log: InMemoryOutputLog, sandbox_id: str, limit: int) -> None:
        self._log, self._id, self._limit = log, sandbox_id, limit

    async def write(self, stream: Stream, data: bytes) -> None:
        buffer = self._log.data.setdefault((self._id, stream), bytearray())
        room = self._limit - len(buffer)
        if len(data) > room:
            self._log.truncated.add((self._id, stream))
        buffer.extend(data[: max(room, 0)])


class InMemoryOutputLog(OutputLog):
    def __init__(self) -> None:
        self.data: dict[tuple[str, Stream], bytearray] = {}
        self.truncated: set[tuple[str, Stream]] = set()

    def sink(self, sandbox_id: str, limit_bytes: int) -> OutputSink:
        return _MemorySink(self, sandbox_id, limit_bytes)

    async def read(self, sandbox_id: str, stream: Stream, offset: int = 0) -> StoredOutput:
        data = bytes(self.data.get((sandbox_id, stream), b""))
        return StoredOutput(data=data[offset:], truncated=(sandbox_id, stream) in self.truncated,
                            size=len(data))

    async def remove(self, sandbox_id: str) -> None:
        for stream in Stream:
            self.data.pop((sandbox_id, stream), None)
            self.truncated.discard((sandbox_id, stream))

    async def ids(self) -> set[str]:
        return {sandbox_id for sandbox_id, _ in self.data}
