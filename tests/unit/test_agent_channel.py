"""The service's end of an agent: what it allows a (possibly hostile) agent to say, and what
it makes of what it hears. The agent here is scripted; tests/integration runs the real one."""

from __future__ import annotations

import asyncio

import pytest
from agent_support import Broken, Collected, connected

from sandbox.adapters.runsc import agent_channel
from sandbox.adapters.runsc.agent_channel import WINDOW, AgentError
from sandbox.adapters.runsc.agent_frames import LiveProcess
from sandbox.adapters.runsc.inside import agent as layout
from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.model import Stream
from sandbox.domain.ports import FILE_CHUNK_BYTES

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_process_output_and_exit_reach_the_caller_in_order() -> None:
    async with connected() as (channel, agent):
        sink = Collected()
        spawning = asyncio.create_task(channel.spawn(["true"], [], "/", sink, timeout_s=5))
        tag, args = await agent.expect("spawn")
        await agent.started(tag)
        assert await spawning == tag
        await agent.out(tag, b"one\n")
        await agent.out(tag, b"oops\n", layout.STDERR)
        await agent.out(tag, b"two\n")
        await agent.exit(tag, 3)

        code = await channel.wait(tag)

    assert code == 3
    assert sink.text() == b"one\ntwo\n"
    assert sink.text(Stream.STDERR) == b"oops\n"
    assert args["argv"] == ["true"]


async def test_a_signal_exit_is_told_as_a_shell_tells_it() -> None:
    async with connected() as (channel, agent):
        spawning = asyncio.create_task(channel.spawn(["x"], [], "/", Collected(), timeout_s=5))
        tag, _ = await agent.expect("spawn")
        await agent.started(tag)
        await spawning
        await agent.exit(tag, 9, signalled=True)

        assert await channel.wait(tag) == 137


async def test_a_program_that_cannot_start_is_an_agent_error_with_its_reason() -> None:
    async with connected() as (channel, agent):
        spawning = asyncio.create_task(channel.spawn(["nope"], [], "/", Collected(), 5))
        tag, _ = await agent.expect("spawn")
        await agent.error(tag, 2, b"nope: No such file or directory")

        with pytest.raises(AgentError) as raised:
            await spawning

    assert raised.value.code == 2
    assert "No such file" in raised.value.message


async def test_credit_is_given_back_as_the_sink_consumes() -> None:
    async with connected() as (channel, agent):
        spawning = asyncio.create_task(channel.spawn(["x"], [], "/", Collected(), 5))
        tag, args = await agent.expect("spawn")
        await agent.started(tag)
        await spawning
        for _ in range(4):
            await agent.out(tag, b"x" * (WINDOW // 4))

        op, credited_tag, grant = await agent.request()

    assert args["credit"] == WINDOW
    assert (op, credited_tag) == ("credit", tag)
    assert grant["bytes"] >= WINDOW // 2


@pytest.mark.parametrize(
    "misdeed",
    ["output beyond credit", "output of an unknown tag", "an answer nobody asked for",
     "a second exit", "an oversized frame", "a frame of unknown kind", "a truncated payload"],
)
async def test_an_agent_that_breaks_the_protocol_breaks_the_channel_and_says_why(
    misdeed: str,
) -> None:
    broken = Broken()
    stuck = Collected()
    stuck.gate.clear()  # consumes nothing, so grants no credit back
    async with connected(broken) as (channel, agent):
        spawning = asyncio.create_task(channel.spawn(["x"], [], "/", stuck, 5))
        tag, _ = await agent.expect("spawn")
        await agent.started(tag)
        await spawning
        if misdeed == "output beyond credit":
            for _ in range(WINDOW // layout.CHUNK + 1):
                await agent.out(tag, b"x" * layout.CHUNK)
        elif misdeed == "output of an unknown tag":
            await agent.out(tag + 100, b"x")
        elif misdeed == "an answer nobody asked for":
            await agent.done(tag + 100, 0)
        elif misdeed == "a second exit":
            await agent.exit(tag, 0)
            await agent.exit(tag, 0)
        elif misdeed == "an oversized frame":
            await agent.raw(layout.LENGTH.pack(64 * 1024 * 1024))
        elif misdeed == "a frame of unknown kind":
            await agent.send(200, tag)
        else:
            await agent.send(layout.EXIT, tag, b"\x00")

        await asyncio.wait_for(broken.event.wait(), 5)
        with pytest.raises(RuntimeFailure):
            await channel.stat("/workspace", timeout_s=5)

    assert len(broken) == 1
    assert channel.broken == broken[0]


async def test_a_process_whose_channel_breaks_ends_in_a_runtime_failure() -> None:
    stuck = Collected()
    stuck.gate.clear()
    async with connected() as (channel, agent):
        spawning = asyncio.create_task(channel.spawn(["x"], [], "/", stuck, 5))
        tag, _ = await agent.expect("spawn")
        await agent.started(tag)
        await spawning
        await agent.send(200, tag)

        with pytest.raises(RuntimeFailure):
            await asyncio.wait_for(channel.wait(tag), 5)


async def test_a_slow_sink_holds_up_its_own_process_only() -> None:
    async with connected() as (channel, agent):
        slow, quick = Collected(), Collected()
        slow.gate.clear()
        tags = []
        for sink in (slow, quick):
            spawning = asyncio.create_task(channel.spawn(["x"], [], "/", sink, 5))
            tag, _ = await agent.expect("spawn")
            await agent.started(tag)
            tags.append(await spawning)
        await agent.out(tags[0], b"stuck\n")
        await agent.exit(tags[0], 0)
        await agent.out(tags[1], b"through\n")
        await agent.exit(tags[1], 0)

        assert await asyncio.wait_for(channel.wait(tags[1]), 5) == 0
        assert quick.text() == b"through\n"
        slow.gate.set()
        assert await asyncio.wait_for(channel.wait(tags[0]), 5) == 0
        assert slow.text() == b"stuck\n"


async def test_an_agent_that_does_not_answer_in_time_breaks_the_channel() -> None:
    broken = Broken()
    async with connected(broken) as (channel, _agent):
        with pytest.raises(RuntimeFailure):
            await channel.stat("/workspace/x", timeout_s=0.1)

    assert broken == ["the agent did not answer in time"]


async def test_a_listing_with_a_path_in_a_name_is_a_violation() -> None:
    broken = Broken()
    async with connected(broken) as (channel, agent):
        listing = asyncio.create_task(channel.list_files("/workspace", 100, 5))
        tag, _ = await agent.expect("list")
        name = b"../etc"
        await agent.send(layout.ENTRIES, tag,
                         layout.ENTRY_PAYLOAD.pack(layout.FILE, 1, 1.0, len(name)) + name)

        with pytest.raises(Exception):  # noqa: B017 (the violation, or the break it causes)
            await listing

    assert len(broken) == 1


async def test_a_listing_is_decoded_into_entries() -> None:
    async with connected() as (channel, agent):
        listing = asyncio.create_task(channel.list_files("/workspace", 100, 5))
        tag, _ = await agent.expect("list")
        payload = b"".join(
            layout.ENTRY_PAYLOAD.pack(kind, size, 2.0, len(name)) + name
            for kind, size, name in [(layout.FILE, 3, b"a.txt"), (layout.DIRECTORY, 0, b"sub")]
        )
        await agent.send(layout.ENTRIES, tag, payload)

        entries = await listing

    assert [(entry.name, entry.kind, entry.size) for entry in entries] == [
        ("a.txt", "file", 3), ("sub", "directory", 0)]


async def test_a_download_streams_within_credit_and_checks_its_end() -> None:
    async with connected() as (channel, agent):
        async def serve() -> None:
            tag, args = await agent.expect("read")
            await agent.stat(tag, 6)
            await agent.send(layout.DATA, tag, b"abc")
            await agent.send(layout.DATA, tag, b"def")
            await agent.done(tag, 6)
            assert args["limit"] == 100

        serving = asyncio.create_task(serve())
        async with channel.read_file("/workspace/f", 100, 5) as (info, chunks):
            data = b"".join([chunk async for chunk in chunks])
        await serving

    assert info.size == 6
    assert data == b"abcdef"


async def test_a_download_whose_end_does_not_match_its_data_is_a_violation() -> None:
    broken = Broken()
    async with connected(broken) as (channel, agent):
        async def serve() -> None:
            tag, _ = await agent.expect("read")
            await agent.stat(tag, 3)
            await agent.send(layout.DATA, tag, b"abc")
            await agent.done(tag, 99)

        serving = asyncio.create_task(serve())
        with pytest.raises(RuntimeFailure):
            async with channel.read_file("/workspace/f", 100, 5) as (_info, chunks):
                [chunk async for chunk in chunks]
        await serving

    assert len(broken) == 1


async def test_an_upload_streams_its_chunks_and_returns_the_size_written() -> None:
    async def chunks() -> asyncio.AsyncIterator[bytes]:  # type: ignore[name-defined]
        for piece in (b"12", b"345"):
            yield piece

    async with connected() as (channel, agent):
        async def serve() -> list[bytes]:
            tag, args = await agent.expect("write")
            await agent.done(tag, 0)
            got = []
            while True:
                op, _, data = await agent.request()
                if op == "end":
                    await agent.done(tag, 5)
                    return got
                got.append(data["data"])  # type: ignore[arg-type]

        serving = asyncio.create_task(serve())
        size = await channel.write_file("/workspace/f", chunks(), 5)

    assert size == 5
    assert await serving == [b"12", b"345"]


async def test_an_upload_refused_part_way_says_why() -> None:
    async def chunks() -> asyncio.AsyncIterator[bytes]:  # type: ignore[name-defined]
        yield b"12"
        await asyncio.sleep(0.2)
        yield b"345"

    async with connected() as (channel, agent):
        async def serve() -> None:
            tag, _ = await agent.expect("write")
            await agent.done(tag, 0)
            await agent.request()
            await agent.error(tag, 27, b"file too large")

        serving = asyncio.create_task(serve())
        with pytest.raises(AgentError) as raised:
            await channel.write_file("/workspace/f", chunks(), 5)
        await serving

    assert raised.value.code == 27


async def test_resume_skips_what_a_checkpoint_cut_and_adopts_what_still_runs() -> None:
    async with connected(hello=False) as (channel, agent):
        resuming = asyncio.create_task(channel.resume(timeout_s=5))
        tag, args = await agent.expect("resume")
        await agent.raw(b"\x00\x00\x01half a frame" + layout.SYNC + bytes(args["nonce"]))  # type: ignore[call-overload]
        label = b"context python 0123456789abcdef 1700000000"
        await agent.send(layout.PROCS, tag, layout.PROC_PAYLOAD.pack(1, 7, 0)
                         + layout.PROC_PAYLOAD.pack(9, 8, len(label)) + label)

        live = await resuming
        sink = Collected()
        channel.adopt(1, sink)
        await agent.out(1, b"after\n")
        await agent.exit(1, 0)

        assert await channel.wait(1) == 0

    assert live == {1: LiveProcess(7, b""), 9: LiveProcess(8, label)}
    assert sink.text() == b"after\n"


async def test_a_flood_of_tiny_frames_is_slowed_not_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agent_channel, "FRAMES_PER_S", 200)
    async with connected() as (channel, agent):
        sink = Collected()
        spawning = asyncio.create_task(channel.spawn(["x"], [], "/", sink, 5))
        tag, _ = await agent.expect("spawn")
        await agent.started(tag)
        await spawning
        for _ in range(300):
            await agent.out(tag, b"x")
        await agent.exit(tag, 0)

        assert await asyncio.wait_for(channel.wait(tag), 10) == 0

    assert sink.text() == b"x" * 300
    assert channel.broken is None or "gone" in channel.broken


def test_the_agent_reads_files_in_the_chunks_the_runtime_port_promises() -> None:
    assert layout.CHUNK == FILE_CHUNK_BYTES
async def test_starting_the_relay_asks_the_agent_with_its_argv_and_waits_for_it() -> None:
    async with connected() as (channel, agent):
        starting = asyncio.create_task(channel.start_relay(["python3", "relay.py"], 5))
        tag, args = await agent.expect("relay")
        assert not starting.done()
        await agent.done(tag, 0)

        await starting

    assert args == {"argv": ["python3", "relay.py"]}


async def test_a_relay_that_does_not_start_is_an_agent_error() -> None:
    async with connected() as (channel, agent):
        starting = asyncio.create_task(channel.start_relay(["python3", "relay.py"], 5))
        tag, _ = await agent.expect("relay")
        await agent.error(tag, 11, b"the egress relay did not start")

        with pytest.raises(AgentError, match="did not start"):
            await starting
