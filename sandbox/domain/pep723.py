"""PEP 723 inline script metadata, found in time linear in the length of the script.

The PEP's reference regular expression backtracks: on crafted input (many `# /// x` lines
over a long run of `#` lines) its time grows with the square of the script, and a 1 MiB
body took minutes. This scan finds exactly the blocks that expression finds (a test compares
them) by looking at each line a fixed number of times:

- a block opens with a line `# /// TYPE` (TYPE: ASCII letters, digits and hyphens) followed
  by a newline, holds at least one content line (`#`, or `# ` and anything, each followed
  by a newline) and closes with a line `# ///`;
- as the expression is greedy, the closing line is the last `# ///` before the first line
  that is not a content line (a `# ///` followed by a newline is itself a content line);
- an opening line without such a closing line opens no block; the search then goes on at
  the next line, and after a block, at the line after its closing line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

from sandbox.domain.errors import InvalidRequest

_OPENER = re.compile(r"# /// [a-zA-Z0-9-]+")
_CLOSER = "# ///"
_NO_BLOCK = -1


@dataclass(frozen=True)
class MetadataBlock:
    type: str
    content: str


def metadata_blocks(text: str) -> list[MetadataBlock]:
    """Every metadata block of `text`, of any type, in order."""
    lines = text.split("\n")
    # Every line but the last one is followed by a newline.
    content = [line == "#" or line.startswith("# ") for line in lines[:-1]] + [False]
    closes = _closing_lines(lines, content)
    blocks = []
    index = 0
    while index < len(lines) - 2:
        closing = closes[index + 2]
        if content[index + 1] and closing != _NO_BLOCK and _OPENER.fullmatch(lines[index]):
            blocks.append(MetadataBlock(lines[index][6:], _embedded(lines[index + 1:closing])))
            index = closing + 1
        else:
            index += 1
    return blocks


def _closing_lines(lines: list[str], content: list[bool]) -> list[int]:
    """For each line i, the last line k >= i that is `# ///` with only content lines from i
    up to it (the closing line of a block whose content starts at i); _NO_BLOCK if none.
    One pass from the end: the answer for i is the answer for i + 1 when line i is a content
    line and that answer exists, else i itself when line i is a closing line."""
    closes = [_NO_BLOCK] * (len(lines) + 1)
    for index in range(len(lines) - 1, -1, -1):
        after = closes[index + 1] if content[index] else _NO_BLOCK
        closes[index] = after if after != _NO_BLOCK else (
            index if lines[index] == _CLOSER else _NO_BLOCK)
    return closes


def _embedded(lines: list[str]) -> str:
    # As the PEP's reference code does it, line breaks within a line included.
    text = "".join(line + "\n" for line in lines)
    return "".join(line[2:] if line.startswith("# ") else line[1:]
                   for line in text.splitlines(keepends=True))


def pep723_dependencies(source: bytes) -> list[str] | None:
    """The `dependencies` of a PEP 723 `# /// script` block; None when there is no block."""
    text = source.decode("utf-8", errors="replace")
    blocks = [block for block in metadata_blocks(text) if block.type == "script"]
    if not blocks:
        return None
    if len(blocks) > 1:
        raise InvalidRequest("the script has more than one '# /// script' metadata block")
    try:
        metadata = tomllib.loads(blocks[0].content)
    except tomllib.TOMLDecodeError as error:
        message = f"the script's '# /// script' block is not valid TOML: {error}"
        raise InvalidRequest(message) from None
    except RecursionError:
        raise InvalidRequest("the script's '# /// script' block nests too deeply") from None
    dependencies = metadata.get("dependencies", [])
    if not isinstance(dependencies, list) or not all(
        isinstance(item, str) for item in dependencies
    ):
        raise InvalidRequest("'dependencies' in the script's '# /// script' block must be a "
                             "list of strings")
    return dependencies
