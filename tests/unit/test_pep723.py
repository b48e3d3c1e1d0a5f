"""PEP 723 blocks: what the scan finds (the same as the PEP's reference expression), and
that its work grows in proportion to the script, whatever the script holds."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.domain.errors import InvalidRequest
from sandbox.domain.pep723 import metadata_blocks, pep723_dependencies

PEP723 = b"""\
#!/usr/bin/env python3
# /// script
# requires-python = ">=3.11"
# dependencies = [
#   "six",
#   "tomli-w==1.0.0",
# ]
# ///
import six
"""

def test_pep723_dependencies_are_read() -> None:
    assert pep723_dependencies(PEP723) == ["six", "tomli-w==1.0.0"]


def test_a_script_without_a_block_has_no_dependencies() -> None:
    assert pep723_dependencies(b"import six\n# dependencies = ['six']\n") is None


def test_a_block_without_dependencies_has_none() -> None:
    assert pep723_dependencies(b'# /// script\n# requires-python = ">=3.11"\n# ///\n') == []


def test_other_block_types_are_ignored() -> None:
    assert pep723_dependencies(b'# /// tool\n# dependencies = ["six"]\n# ///\n') is None


def test_an_unclosed_block_is_no_block() -> None:
    assert pep723_dependencies(b'# /// script\n# dependencies = ["six"]\nimport six\n') is None


def test_a_block_may_hold_empty_comment_lines() -> None:
    source = b'# /// script\n#\n# dependencies = ["six"]\n#\n# ///\n'

    assert pep723_dependencies(source) == ["six"]


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (b"# /// script\n# dependencies = [\n# ///\n", "not valid TOML"),
        (b'# /// script\n# dependencies = "six"\n# ///\n', "list of strings"),
        (b"# /// script\n# dependencies = [1, 2]\n# ///\n", "list of strings"),
        (b'# /// script\n# dependencies = ["a"]\n# ///\nx = 1\n# /// script\n#\n# ///\n',
         "more than one"),
    ],
    ids=["bad-toml", "not-a-list", "not-strings", "two-blocks"],
)
def test_a_malformed_block_is_refused(source: bytes, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        pep723_dependencies(source)


# The PEP's reference expression, and how the PEP's reference code reads a block's content.
REFERENCE = re.compile(
    r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$"
)


def reference_blocks(text: str) -> list[tuple[str, str]]:
    return [
        (match["type"], "".join(line[2:] if line.startswith("# ") else line[1:]
                                for line in match["content"].splitlines(keepends=True)))
        for match in REFERENCE.finditer(text)
    ]


LINES = st.one_of(
    st.sampled_from(["# /// script", "# /// a-1", "# ///", "#", "# x = 1", "", "x", "# /// ",
                     "#x", "# ///  ", " # ///", "# /// script\r", "# a\rb", "# /// é"]),
    st.text(alphabet="# /ab\r\t\x0c", max_size=8),
)


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(LINES, max_size=12), newline=st.sampled_from(["\n", "\r\n"]),
       ending=st.sampled_from(["", "\n"]))
def test_the_scan_finds_exactly_the_blocks_of_the_peps_reference_expression(
    lines: list[str], newline: str, ending: str
) -> None:
    text = newline.join(lines) + ending

    found = [(block.type, block.content) for block in metadata_blocks(text)]

    assert found == reference_blocks(text)


def crafted(shape: str, size: int) -> bytes:
    """Bodies of about `size` bytes that make a backtracking search slow."""
    if shape == "openers then comment lines":  # the body reported in the issue
        return b"# /// a\n" * (size // 16) + b"#\n" * (size // 4)
    if shape == "only openers":
        return b"# /// script\n" * (size // 13)
    if shape == "a block never closed":
        return b"# /// script\n" + b"# x\n" * (size // 4)
    if shape == "blocks closed at the very end":
        return b"# /// a\n# ///\n" * (size // 14) + b"x\n"
    if shape == "one huge line":
        return b"# /// " + b"a" * size
    if shape == "closing lines only":
        return b"# ///\n" * (size // 6)
    raise ValueError(shape)


SHAPES = ["openers then comment lines", "only openers", "a block never closed",
          "blocks closed at the very end", "one huge line", "closing lines only"]


def lines_run(work: Callable[[], Any]) -> int:
    """How many lines of Python `work` runs (in every function it calls): a measure of work
    that does not depend on the machine or its load."""
    count = 0

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        work()
    except InvalidRequest:
        pass
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("shape", SHAPES)
def test_the_work_of_reading_a_script_grows_in_proportion_to_its_size(shape: str) -> None:
    small, large = (crafted(shape, size) for size in (64 * 1024, 128 * 1024))

    work_small = lines_run(lambda: pep723_dependencies(small))
    work_large = lines_run(lambda: pep723_dependencies(large))

    # Twice the input, twice the work (a fixed allowance for what does not depend on size);
    # a search that backtracks would do four times as much.
    assert work_large <= 2 * work_small + 500


HANG_GUARD_S = 120  # not a measure of speed: the old expression took minutes here
AT_THE_LIMIT = textwrap.dedent("""
    import sys
    from sandbox.domain.errors import InvalidRequest
    from sandbox.domain.pep723 import pep723_dependencies
    sys.path.insert(0, {tests!r})
    from test_pep723 import SHAPES, crafted
    for shape in SHAPES:
        body = crafted(shape, 1024 * 1024)
        assert len(body) <= 1024 * 1024 + 16, len(body)
        try:
            print(shape, pep723_dependencies(body), flush=True)
        except InvalidRequest as error:
            print(shape, "refused:", error.message[:40], flush=True)
""")


def test_crafted_bodies_at_the_size_limit_are_read_without_hanging() -> None:
    script = AT_THE_LIMIT.format(tests=str(Path(__file__).parent))

    done = subprocess.run([sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "openers then comment lines None",
        "only openers None",
        "a block never closed None",
        "blocks closed at the very end None",
        "one huge line None",
        "closing lines only None",
    ]
