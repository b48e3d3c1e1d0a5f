"""`PostgresOutputLog`: detached output in the shared database, so every instance reads it
and it outlives the instance that ran the script. Capped per stream as the file log is.

Each write is one statement: it grows the stream's row under its lock, by as much of the
write as fits under the cap, and stores that part as a chunk at the stream's old size."""

from __future__ import annotations

from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.domain.model import Stream
from sandbox.domain.ports import OUTPUT_READ_LIMIT, OutputLog, OutputSink, StoredOutput

_APPEND = """
WITH grown AS (
    INSERT INTO output_streams AS s (sandbox_id, stream, size, truncated, last_kept)
    VALUES (%(sandbox_id)s, %(stream)s, LEAST(%(length)s, %(limit)s),
            %(length)s > %(limit)s, LEAST(%(length)s, %(limit)s))
    ON CONFLICT (sandbox_id, stream) DO UPDATE SET
        size = s.size + LEAST(%(length)s, GREATEST(%(limit)s - s.size, 0)),
        truncated = s.truncated OR %(length)s > %(limit)s - s.size,
        last_kept = LEAST(%(length)s, GREATEST(%(limit)s - s.size, 0))
    RETURNING size, last_kept
)
INSERT INTO output_chunks (sandbox_id, stream, start, data)
SELECT %(sandbox_id)s, %(stream)s, size - last_kept,
       substring(%(data)s FROM 1 FOR last_kept::integer)
FROM grown WHERE last_kept > 0
"""

# One statement, one snapshot: the size and the chunks agree.
_READ = """
SELECT s.size, s.truncated, c.start, c.data
FROM output_streams s
LEFT JOIN output_chunks c ON c.sandbox_id = s.sandbox_id AND c.stream = s.stream
    AND c.start + length(c.data) > %(offset)s AND c.start < %(offset)s + %(limit)s
WHERE s.sandbox_id = %(sandbox_id)s AND s.stream = %(stream)s
ORDER BY c.start
"""


class _PostgresSink(OutputSink):
    def __init__(self, database: PostgresDatabase, sandbox_id: str, limit: int) -> None:
        self._db, self._sandbox_id, self._limit = database, sandbox_id, limit

    async def write(self, stream: Stream, data: bytes) -> None:
        if not data:
            return
        await self._db.fetch(_APPEND, {
            "sandbox_id": self._sandbox_id, "stream": stream.value, "data": data,
            "length": len(data), "limit": self._limit,
        })


class PostgresOutputLog(OutputLog):
    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database

    def sink(self, sandbox_id: str, limit_bytes: int) -> OutputSink:
        return _PostgresSink(self._db, sandbox_id, limit_bytes)

    async def read(self, sandbox_id: str, stream: Stream, offset: int = 0) -> StoredOutput:
        rows = await self._db.fetch(_READ, {"sandbox_id": sandbox_id, "stream": stream.value,
                                            "offset": offset, "limit": OUTPUT_READ_LIMIT})
        if not rows:
            return StoredOutput(data=b"", truncated=False, size=0)
        size, truncated = rows[0][0], rows[0][1]
        chunks = [(start, bytes(data)) for _, _, start, data in rows if start is not None]
        joined = b"".join(data for _, data in chunks)
        skip = offset - chunks[0][0] if chunks else 0
        return StoredOutput(data=joined[skip:skip + OUTPUT_READ_LIMIT], truncated=truncated,
                            size=size)

    async def remove(self, sandbox_id: str) -> None:
        async with self._db.connection() as conn, conn.transaction():
            for table in ("output_chunks", "output_streams"):
                await conn.execute(f"DELETE FROM {table} WHERE sandbox_id = %s", (sandbox_id,))

    async def ids(self) -> set[str]:
        rows = await self._db.fetch("SELECT DISTINCT sandbox_id FROM output_streams", {})
        return {row[0] for row in rows}
