"""What every OutputLog does, held to by the in-memory log, the file one and the PostgreSQL
one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox.adapters.file_output_log import FileOutputLog
from sandbox.adapters.memory_store import InMemoryOutputLog
from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.adapters.postgres.output_log import PostgresOutputLog
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.model import Stream
from sandbox.domain.ports import OUTPUT_READ_LIMIT, OutputLog, StoredOutput

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "file", pytest.param("postgres", marks=pytest.mark.postgres)])
async def outputs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OutputLog]:
    if request.param == "memory":
        yield InMemoryOutputLog()
    elif request.param == "file":
        yield FileOutputLog(tmp_path / "out")
    else:
        database = PostgresDatabase(request.getfixturevalue("postgres_url"))
        await database.start()
        yield PostgresOutputLog(database)
        await database.close()


async def written(outputs: OutputLog, limit: int, *writes: tuple[Stream, bytes]) -> str:
    sandbox_id = new_sandbox_id()
    sink = outputs.sink(sandbox_id, limit)
    for stream, data in writes:
        await sink.write(stream, data)
    return sandbox_id


async def test_each_stream_is_kept_apart_in_the_order_written(outputs: OutputLog) -> None:
    sandbox_id = await written(outputs, 100, (Stream.STDOUT, b"one\n"), (Stream.STDERR, b"x\n"),
                               (Stream.STDOUT, b"two\n"))

    stdout = await outputs.read(sandbox_id, Stream.STDOUT)
    stderr = await outputs.read(sandbox_id, Stream.STDERR)

    assert stdout == StoredOutput(data=b"one\ntwo\n", truncated=False, size=8)
    assert stderr == StoredOutput(data=b"x\n", truncated=False, size=2)


async def test_output_exactly_at_the_cap_is_not_truncated(outputs: OutputLog) -> None:
    sandbox_id = await written(outputs, 6, (Stream.STDOUT, b"abc"), (Stream.STDOUT, b"def"))

    stdout = await outputs.read(sandbox_id, Stream.STDOUT)

    assert (stdout.data, stdout.truncated) == (b"abcdef", False)


async def test_output_over_the_cap_is_cut_there_and_flagged_for_that_stream_only(
    outputs: OutputLog,
) -> None:
    sandbox_id = await written(outputs, 5, (Stream.STDOUT, b"abc"), (Stream.STDOUT, b"defg"),
                               (Stream.STDOUT, b"more"), (Stream.STDERR, b"err"))

    stdout = await outputs.read(sandbox_id, Stream.STDOUT)
    stderr = await outputs.read(sandbox_id, Stream.STDERR)

    assert stdout == StoredOutput(data=b"abcde", truncated=True, size=5)
    assert (stderr.data, stderr.truncated) == (b"err", False)


async def test_a_second_sink_appends_and_the_cap_spans_both(outputs: OutputLog) -> None:
    """As after a restore: the sandbox's output goes on in the same record."""
    sandbox_id = await written(outputs, 6, (Stream.STDOUT, b"abcd"))

    await outputs.sink(sandbox_id, 6).write(Stream.STDOUT, b"efgh")

    stdout = await outputs.read(sandbox_id, Stream.STDOUT)
    assert (stdout.data, stdout.truncated) == (b"abcdef", True)


async def test_a_read_from_an_offset_gets_the_rest_and_the_whole_size(
    outputs: OutputLog,
) -> None:
    sandbox_id = await written(outputs, 100, (Stream.STDOUT, b"0123456789"))

    rest = await outputs.read(sandbox_id, Stream.STDOUT, offset=4)
    past_the_end = await outputs.read(sandbox_id, Stream.STDOUT, offset=10)

    assert (rest.data, rest.size) == (b"456789", 10)
    assert (past_the_end.data, past_the_end.size) == (b"", 10)


async def test_a_sandbox_without_output_reads_as_empty(outputs: OutputLog) -> None:
    stdout = await outputs.read(new_sandbox_id(), Stream.STDOUT)

    assert stdout == StoredOutput(data=b"", truncated=False, size=0)


async def test_ids_are_the_sandboxes_with_output(outputs: OutputLog) -> None:
    first = await written(outputs, 100, (Stream.STDOUT, b"a"))
    second = await written(outputs, 100, (Stream.STDERR, b"b"))

    assert await outputs.ids() == {first, second}


async def test_remove_forgets_the_output_and_its_flags(outputs: OutputLog) -> None:
    removed = await written(outputs, 1, (Stream.STDOUT, b"ab"), (Stream.STDERR, b"cd"))
    kept = await written(outputs, 100, (Stream.STDOUT, b"kept"))

    await outputs.remove(removed)
    await outputs.remove(removed)

    assert await outputs.ids() == {kept}
    for stream in Stream:
        assert await outputs.read(removed, stream) == StoredOutput(b"", False, 0)
    assert (await outputs.read(kept, Stream.STDOUT)).data == b"kept"


async def test_output_written_after_a_remove_starts_afresh(outputs: OutputLog) -> None:
    sandbox_id = await written(outputs, 3, (Stream.STDOUT, b"abcd"))
    await outputs.remove(sandbox_id)

    await outputs.sink(sandbox_id, 3).write(Stream.STDOUT, b"xy")

    assert await outputs.read(sandbox_id, Stream.STDOUT) == StoredOutput(b"xy", False, 2)


async def test_file_output_survives_a_new_log_over_the_same_folder(tmp_path: Path) -> None:
    sandbox_id = await written(FileOutputLog(tmp_path), 3, (Stream.STDOUT, b"abcd"))

    reopened = FileOutputLog(tmp_path)

    assert await reopened.ids() == {sandbox_id}
    assert await reopened.read(sandbox_id, Stream.STDOUT) == StoredOutput(b"abc", True, 3)


async def test_a_read_gets_at_most_the_read_limit_from_its_offset(outputs: OutputLog) -> None:
    chunk = bytes(range(256)) * 4096
    sandbox_id = await written(outputs, 8 * 1024 * 1024,
                               *((Stream.STDOUT, chunk) for _ in range(5)))

    whole = await outputs.read(sandbox_id, Stream.STDOUT)
    rest = await outputs.read(sandbox_id, Stream.STDOUT, offset=OUTPUT_READ_LIMIT + 100)

    assert (whole.data, whole.size) == ((chunk * 5)[:OUTPUT_READ_LIMIT], 5 * len(chunk))
    assert rest.data == (chunk * 5)[OUTPUT_READ_LIMIT + 100:]


# PostgreSQL only ---------------------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_output_is_read_by_another_instance_after_the_writer_is_gone(
    postgres_url: str,
) -> None:
    writer = PostgresDatabase(postgres_url)
    await writer.start()
    sandbox_id = await written(PostgresOutputLog(writer), 5, (Stream.STDOUT, b"abc"),
                               (Stream.STDERR, b"e"), (Stream.STDOUT, b"defg"))
    await writer.close()
    reader = PostgresDatabase(postgres_url)
    await reader.start()

    try:
        stdout = await PostgresOutputLog(reader).read(sandbox_id, Stream.STDOUT, offset=1)
    finally:
        await reader.close()

    assert stdout == StoredOutput(data=b"bcde", truncated=True, size=5)


@pytest.mark.postgres
async def test_postgres_sinks_writing_at_once_keep_every_byte_up_to_the_cap(
    postgres_url: str,
) -> None:
    """Two sinks on one stream (as a restore starts while the old sink drains)."""
    database = PostgresDatabase(postgres_url, max_size=4)
    await database.start()
    outputs, sandbox_id = PostgresOutputLog(database), new_sandbox_id()
    sinks = [outputs.sink(sandbox_id, 150) for _ in range(2)]

    try:
        await asyncio.gather(*(sink.write(Stream.STDOUT, bytes([65 + n]) * 10)
                               for n in range(10) for sink in sinks))
        stdout = await outputs.read(sandbox_id, Stream.STDOUT)
    finally:
        await database.close()

    assert (stdout.size, len(stdout.data), stdout.truncated) == (150, 150, True)
    runs = [stdout.data[at:at + 10] for at in range(0, 150, 10)]
    assert all(len(set(run)) == 1 for run in runs)
