from __future__ import annotations

import pytest

from sandbox.domain.model import CapturedOutput, Stream
from sandbox.domain.output import OutputCapture

pytestmark = pytest.mark.anyio

EURO = "€".encode()  # three bytes: e2 82 ac


async def captured(limit: int, *writes: bytes) -> CapturedOutput:
    capture = OutputCapture(limit)
    for data in writes:
        await capture.write(Stream.STDOUT, data)
    await capture.close()
    return capture.captured(Stream.STDOUT)


async def test_output_under_the_cap_is_kept_whole() -> None:
    assert await captured(10, b"hello") == CapturedOutput("hello", truncated=False)


async def test_output_exactly_at_the_cap_is_not_truncated() -> None:
    assert await captured(5, b"hel", b"lo") == CapturedOutput("hello", truncated=False)


async def test_output_over_the_cap_is_cut_there_and_flagged() -> None:
    assert await captured(5, b"abc", b"defg", b"more") == CapturedOutput("abcde", truncated=True)


async def test_a_character_split_across_writes_decodes_whole() -> None:
    assert (await captured(100, b"caf\xc3", b"\xa9!")).text == "café!"


async def test_invalid_utf8_becomes_the_replacement_character() -> None:
    assert (await captured(100, b"a\xffb")).text == "a\ufffdb"


async def test_an_incomplete_character_at_the_end_becomes_the_replacement_character() -> None:
    assert (await captured(100, b"ab\xc3")).text == "ab\ufffd"


async def test_truncation_inside_a_character_drops_its_partial_bytes() -> None:
    result = await captured(4, b"abc" + EURO)

    assert result == CapturedOutput("abc", truncated=True)


async def test_streams_are_capped_separately() -> None:
    capture = OutputCapture(3)

    await capture.write(Stream.STDOUT, b"out!")
    await capture.write(Stream.STDERR, b"err")
    await capture.close()

    assert capture.captured(Stream.STDOUT) == CapturedOutput("out", truncated=True)
    assert capture.captured(Stream.STDERR) == CapturedOutput("err", truncated=False)


async def test_the_listener_hears_decoded_text_as_it_arrives() -> None:
    heard: list[tuple[Stream, str]] = []

    async def listener(stream: Stream, text: str) -> None:
        heard.append((stream, text))

    capture = OutputCapture(100, listener)
    await capture.write(Stream.STDOUT, b"caf\xc3")
    await capture.write(Stream.STDERR, b"oops")
    await capture.write(Stream.STDOUT, b"\xa9")
    await capture.write(Stream.STDOUT, b"\xe2\x82")
    await capture.close()

    assert heard == [
        (Stream.STDOUT, "caf"),
        (Stream.STDERR, "oops"),
        (Stream.STDOUT, "é"),
        (Stream.STDOUT, "\ufffd"),
    ]


async def test_the_listener_hears_nothing_past_the_cap() -> None:
    heard: list[str] = []

    async def listener(stream: Stream, text: str) -> None:
        heard.append(text)

    capture = OutputCapture(4, listener)
    await capture.write(Stream.STDOUT, b"abc" + EURO)
    await capture.write(Stream.STDOUT, b"more")
    await capture.close()

    assert heard == ["abc"]
