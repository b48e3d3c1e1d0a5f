"""What every SandboxRuntime does, written in the fake's tiny language so both can run it."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from sandbox.domain.errors import FileNotFoundInSandbox, PayloadTooLarge, RuntimeFailure
from sandbox.domain.ids import ID_PATTERN, new_sandbox_id
from sandbox.domain.lifecycle.execution import run_script
from sandbox.domain.model import IDLE, Language, Limits, Outcome, Program, SandboxSpec, Stream
from sandbox.domain.output import OutputCapture
from sandbox.domain.ports import FILE_CHUNK_BYTES, OutputSink, SandboxRuntime
from sandbox.settings import Settings

pytestmark = pytest.mark.anyio

LIMITS = dataclasses.replace(Settings().default_limits(), timeout_s=20)


async def test_python_stdout_and_stderr_are_kept_apart(runtime: SandboxRuntime) -> None:
    source = b'import sys\nprint("to out")\nprint("to err", file=sys.stderr)\nprint("out again")\n'

    result = await run_script(runtime, Language.PYTHON, source, LIMITS)

    assert result.stdout.text == "to out\nout again\n"
    assert result.stderr.text == "to err\n"
    assert result.outcome.exit_code == 0


async def test_bash_stdout_and_stderr_are_kept_apart(runtime: SandboxRuntime) -> None:
    source = b"echo to out\necho to err >&2\necho out again\n"

    result = await run_script(runtime, Language.BASH, source, LIMITS)

    assert result.stdout.text == "to out\nout again\n"
    assert result.stderr.text == "to err\n"
    assert result.outcome.exit_code == 0


async def test_an_empty_script_succeeds_silently(runtime: SandboxRuntime) -> None:
    result = await run_script(runtime, Language.PYTHON, b"", LIMITS)

    assert result.outcome.exit_code == 0
    assert (result.stdout.text, result.stderr.text) == ("", "")


async def test_text_outside_ascii_comes_back_as_written(runtime: SandboxRuntime) -> None:
    result = await run_script(runtime, Language.PYTHON, 'print("héllo 漢字")'.encode(), LIMITS)

    assert result.stdout.text == "héllo 漢字\n"


@pytest.mark.parametrize(
    ("language", "source", "code"),
    [
        (Language.PYTHON, b'import sys\nprint("before")\nsys.exit(3)\nprint("after")\n', 3),
        (Language.BASH, b"echo before\nexit 7\necho after\n", 7),
    ],
    ids=["python", "bash"],
)
async def test_a_script_ends_at_its_exit_with_its_code(
    runtime: SandboxRuntime, language: Language, source: bytes, code: int
) -> None:
    result = await run_script(runtime, language, source, LIMITS)

    assert result.outcome.exit_code == code
    assert result.outcome.timed_out is False
    assert result.outcome.oom_killed is False
    assert result.stdout.text == "before\n"


@pytest.mark.parametrize(
    ("language", "source"),
    [
        (Language.PYTHON, b'import time\nprint("before")\ntime.sleep(30)\nprint("after")\n'),
        (Language.BASH, b"echo before\nsleep 30\necho after\n"),
    ],
    ids=["python", "bash"],
)
async def test_a_script_past_its_timeout_is_timed_out_with_no_exit_code(
    runtime: SandboxRuntime, language: Language, source: bytes
) -> None:
    # The timer counts from the sandbox's start: 1.5 s leaves a loaded machine time to reach
    # the first line (0.5 s did not, once), and the sleep is far beyond it.
    limits = dataclasses.replace(LIMITS, timeout_s=1.5)

    result = await run_script(runtime, language, source, limits)

    assert result.outcome.timed_out is True
    assert result.outcome.exit_code is None
    assert result.outcome.duration_ms < 25_000  # ended by the timer, not after the 30 s sleep
    assert result.stdout.text == "before\n"  # what it printed before the end is kept


async def test_output_past_the_cap_is_cut_and_flagged(runtime: SandboxRuntime) -> None:
    limits = dataclasses.replace(LIMITS, output_bytes=1000)
    source = b'import sys\nprint("x" * 3000)\nprint("short", file=sys.stderr)\n'

    result = await run_script(runtime, Language.PYTHON, source, limits)

    assert result.stdout.text == "x" * 1000
    assert result.stdout.truncated is True
    assert result.stderr.text == "short\n"
    assert result.stderr.truncated is False
    assert result.outcome.exit_code == 0


async def test_the_result_has_the_documented_shape(runtime: SandboxRuntime) -> None:
    result = await run_script(runtime, Language.BASH, b"echo shaped\n", LIMITS)

    summary, full = result.summary(), result.to_dict()

    assert ID_PATTERN.match(result.sandbox_id)
    assert summary == {
        "sandbox_id": result.sandbox_id,
        "language": "bash",
        "exit_code": 0,
        "timed_out": False,
        "oom_killed": False,
        "stdout_truncated": False,
        "stderr_truncated": False,
        "duration_ms": result.outcome.duration_ms,
    }
    assert full == {**summary, "stdout": "shaped\n", "stderr": ""}
    assert isinstance(summary["duration_ms"], int)


async def test_each_execution_gets_a_new_sandbox_id(runtime: SandboxRuntime) -> None:
    first = await run_script(runtime, Language.BASH, b"echo one\n", LIMITS)
    second = await run_script(runtime, Language.BASH, b"echo two\n", LIMITS)

    assert first.sandbox_id != second.sandbox_id


async def test_a_healthy_runtime_reports_no_readiness_problems(runtime: SandboxRuntime) -> None:
    assert await runtime.readiness() == []


async def test_the_identity_names_the_rootfs(runtime: SandboxRuntime) -> None:
    identity = runtime.identity

    assert isinstance(identity.get("rootfs"), str)
    assert identity["rootfs"] != ""


# Warm sandboxes: started ahead, then given one script.


async def run_warm(
    runtime: SandboxRuntime, language: Language, source: bytes, limits: Limits = LIMITS
) -> tuple[Outcome, str, str]:
    spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=limits)
    await runtime.start_warm(spec, language, ())
    try:
        capture = OutputCapture(limits.output_bytes)
        outcome = await runtime.run_warm(spec.sandbox_id, Program.script(language, source),
                                         capture, limits.timeout_s)
        await capture.close()
    finally:
        await runtime.destroy(spec.sandbox_id)
    return (outcome, capture.captured(Stream.STDOUT).text,
            capture.captured(Stream.STDERR).text)


@pytest.mark.parametrize(
    ("language", "source"),
    [
        (Language.PYTHON,
         b'import sys\nprint("out")\nprint("err", file=sys.stderr)\nsys.exit(3)\n'),
        (Language.BASH, b"echo out\necho err >&2\nexit 3\n"),
    ],
    ids=["python", "bash"],
)
async def test_a_warm_sandbox_runs_its_script_as_a_new_one_would(
    runtime: SandboxRuntime, language: Language, source: bytes
) -> None:
    cold = await run_script(runtime, language, source, LIMITS)

    outcome, stdout, stderr = await run_warm(runtime, language, source)

    assert (outcome.exit_code, stdout, stderr) == (
        cold.outcome.exit_code, cold.stdout.text, cold.stderr.text)
    assert (outcome.exit_code, stdout, stderr) == (3, "out\n", "err\n")
    assert outcome.timed_out is False
    assert outcome.oom_killed is False


async def test_a_warm_script_past_its_timeout_is_timed_out(runtime: SandboxRuntime) -> None:
    source = b'import time\nprint("before")\ntime.sleep(5)\nprint("after")\n'

    outcome, stdout, _ = await run_warm(runtime, Language.PYTHON, source,
                                        dataclasses.replace(LIMITS, timeout_s=0.5))

    assert outcome.timed_out is True
    assert outcome.exit_code is None
    assert stdout == "before\n"


async def test_a_warm_sandbox_refuses_a_script_of_another_language(
    runtime: SandboxRuntime,
) -> None:
    spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=LIMITS)
    await runtime.start_warm(spec, Language.BASH, ())
    try:
        with pytest.raises(RuntimeFailure):
            await runtime.run_warm(spec.sandbox_id, Program.script(Language.PYTHON, b""),
                                   OutputCapture(100), 5)
    finally:
        await runtime.destroy(spec.sandbox_id)


# Files in a long-lived sandbox, moved in chunks ---------------------------------------------


class _Discard(OutputSink):
    async def write(self, stream: Stream, data: bytes) -> None:
        pass


@asynccontextmanager
async def session(runtime: SandboxRuntime) -> AsyncIterator[str]:
    spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=LIMITS)
    await runtime.launch(spec, IDLE, _Discard())
    try:
        yield spec.sandbox_id
    finally:
        await runtime.destroy(spec.sandbox_id)


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def cut_short(data: bytes, error: Exception) -> AsyncIterator[bytes]:
    """An upload whose client fails half-way: some chunks, then the error."""
    async for chunk in pieces(data, 1000):
        yield chunk
    raise error


async def read_whole(runtime: SandboxRuntime, sandbox_id: str, path: str,
                     limit_bytes: int = 1 << 30) -> bytes:
    async with runtime.read_file(sandbox_id, path, limit_bytes) as opened:
        return b"".join([chunk async for chunk in opened.chunks])


async def test_a_file_many_chunks_long_round_trips_in_bounded_chunks(
    runtime: SandboxRuntime,
) -> None:
    data = random.Random(8).randbytes(64 * FILE_CHUNK_BYTES + 123)

    async with session(runtime) as sandbox_id:
        # Pieces that are not chunk-sized: each side splits and joins as it must.
        written = await runtime.write_file(sandbox_id, "/workspace/deep/blob.bin",
                                           pieces(data, 100_000))
        async with runtime.read_file(sandbox_id, "/workspace/deep/blob.bin",
                                     len(data)) as opened:
            size = opened.size
            received = [chunk async for chunk in opened.chunks]

    assert written == size == len(data)
    assert b"".join(received) == data
    assert all(0 < len(chunk) <= FILE_CHUNK_BYTES for chunk in received)


async def test_an_empty_file_round_trips(runtime: SandboxRuntime) -> None:
    async with session(runtime) as sandbox_id:
        written = await runtime.write_file(sandbox_id, "/workspace/empty", pieces(b"", 1))
        read = await read_whole(runtime, sandbox_id, "/workspace/empty")

    assert (written, read) == (0, b"")


async def test_an_upload_that_fails_half_way_leaves_the_old_file_and_nothing_else(
    runtime: SandboxRuntime,
) -> None:
    async with session(runtime) as sandbox_id:
        await runtime.write_file(sandbox_id, "/workspace/box/kept.txt", pieces(b"old", 10))

        with pytest.raises(PayloadTooLarge, match="cut here"):
            await runtime.write_file(sandbox_id, "/workspace/box/kept.txt",
                                     cut_short(b"n" * 5000, PayloadTooLarge("cut here")))
        with pytest.raises(PayloadTooLarge, match="cut here"):
            await runtime.write_file(sandbox_id, "/workspace/box/new.txt",
                                     cut_short(b"n" * 5000, PayloadTooLarge("cut here")))
        kept = await read_whole(runtime, sandbox_id, "/workspace/box/kept.txt")
        listed = await runtime.list_files(sandbox_id, "/workspace/box")

    assert kept == b"old"
    assert [(entry.name, entry.kind, entry.size) for entry in listed] == [("kept.txt", "file", 3)]


async def test_a_file_over_the_limit_is_refused_before_any_byte_is_read(
    runtime: SandboxRuntime,
) -> None:
    async with session(runtime) as sandbox_id:
        await runtime.write_file(sandbox_id, "/workspace/big.bin", pieces(b"x" * 2048, 512))

        with pytest.raises(PayloadTooLarge):
            async with runtime.read_file(sandbox_id, "/workspace/big.bin", 2047):
                pytest.fail("a file over the limit was opened")
        at_limit = await read_whole(runtime, sandbox_id, "/workspace/big.bin", 2048)

    assert at_limit == b"x" * 2048


async def test_a_missing_file_is_not_found(runtime: SandboxRuntime) -> None:
    async with session(runtime) as sandbox_id:
        with pytest.raises(FileNotFoundInSandbox):
            async with runtime.read_file(sandbox_id, "/workspace/nothing", 100):
                pytest.fail("a missing file was opened")


async def test_a_download_left_half_way_leaves_the_sandbox_serving(
    runtime: SandboxRuntime,
) -> None:
    data = b"z" * (8 * FILE_CHUNK_BYTES)

    async with session(runtime) as sandbox_id:
        await runtime.write_file(sandbox_id, "/workspace/z.bin", pieces(data, FILE_CHUNK_BYTES))
        async with runtime.read_file(sandbox_id, "/workspace/z.bin", len(data)) as opened:
            first = await anext(opened.chunks)
        again = await read_whole(runtime, sandbox_id, "/workspace/z.bin")

    assert first == data[:len(first)]
    assert again == data


async def test_listing_a_folder_names_its_files_with_their_sizes(
    runtime: SandboxRuntime,
) -> None:
    async with session(runtime) as sandbox_id:
        await runtime.write_file(sandbox_id, "/workspace/listed/b.bin", pieces(b"bb", 1))
        await runtime.write_file(sandbox_id, "/workspace/listed/a.txt", pieces(b"aaa", 1))
        listed = await runtime.list_files(sandbox_id, "/workspace/listed")

    assert [(entry.name, entry.kind, entry.size) for entry in listed] == [
        ("a.txt", "file", 3), ("b.bin", "file", 2)]
async def test_the_limit_layers_name_every_limit_and_hold_wall_time_on_the_server(
    runtime: SandboxRuntime,
) -> None:
    layers = runtime.limit_layers()

    assert set(layers) == {"memory", "cpu", "pids", "open_files", "file_size", "tmp",
                           "wall_time", "output"}
    assert layers["wall_time"] == ["server_timer"]
    assert layers["memory"] != []
async def test_a_destroyed_warm_sandbox_leaves_nothing_and_runs_nothing(
    runtime: SandboxRuntime,
) -> None:
    spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=LIMITS)
    await runtime.start_warm(spec, Language.PYTHON, ())

    await runtime.destroy(spec.sandbox_id)

    assert spec.sandbox_id not in await runtime.leftover_ids()
    with pytest.raises(RuntimeFailure):
        await runtime.run_warm(spec.sandbox_id, Program.script(Language.PYTHON, b""),
                               OutputCapture(100), 5)
