"""In-memory store and output log, for unit tests."""

from __future__ import annotations

from sandbox.adapters.fences import checked_fence, lease_lost
from sandbox.adapters.memory_leases import InMemoryLeaseStore
from sandbox.domain.errors import InvalidState
from sandbox.domain.model import Sandbox, SandboxState, Stream
from sandbox.domain.ports import (
    OUTPUT_READ_LIMIT,
    Lease,
    OutputLog,
    OutputSink,
    SandboxStore,
    StoredOutput,
)


class InMemorySandboxStore(SandboxStore):
    """Fenced writes check the leases of the lease store given (by default, one of its own)."""

    def __init__(self, leases: InMemoryLeaseStore | None = None) -> None:
        self.records: dict[str, Sandbox] = {}
        self.leases = leases if leases is not None else InMemoryLeaseStore()

    def _check(self, sandbox_id: str, fence: Lease | None) -> None:
        if fence is not None and not self.leases.live(sandbox_id,
                                                      checked_fence(fence, sandbox_id).token):
            raise lease_lost(fence)

    async def add(self, sandbox: Sandbox) -> None:
        if sandbox.sandbox_id in self.records:
            raise InvalidState(f"sandbox {sandbox.sandbox_id} exists already")
        self.records[sandbox.sandbox_id] = sandbox

    async def save(self, sandbox: Sandbox, fence: Lease | None = None) -> None:
        self._check(sandbox.sandbox_id, fence)
        if sandbox.sandbox_id in self.records:
            self.records[sandbox.sandbox_id] = sandbox

    async def get(self, sandbox_id: str) -> Sandbox | None:
        return self.records.get(sandbox_id)

    async def remove(self, sandbox_id: str, fence: Lease | None = None) -> None:
        self._check(sandbox_id, fence)
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
        return StoredOutput(data=data[offset:offset + OUTPUT_READ_LIMIT],
                            truncated=(sandbox_id, stream) in self.truncated, size=len(data))

    async def remove(self, sandbox_id: str) -> None:
        for stream in Stream:
            self.data.pop((sandbox_id, stream), None)
            self.truncated.discard((sandbox_id, stream))

    async def ids(self) -> set[str]:
        return {sandbox_id for sandbox_id, _ in self.data}
