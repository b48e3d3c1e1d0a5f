"""Scripts and readings the fault tests share."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from integration.server import ok

# Prints once, then sleeps without a word: it still runs when its server is killed (a script
# that printed then would die of the closed pipe).
SILENT = b'import time\nprint("started", flush=True)\ntime.sleep(600)\n'
COUNTER = b"""\
import time
n = 0
while True:
    print(n, flush=True)
    n += 1
    time.sleep(0.1)
"""
DETACH = "/execute?language=python&detach=true&timeout=300"


def stdout(client: httpx.Client, sandbox_id: str) -> str:
    text: str = ok(client.get(f"/sandboxes/{sandbox_id}/output"))["stdout"]
    return text


def numbers(client: httpx.Client, sandbox_id: str) -> list[int]:
    return [int(word) for word in stdout(client, sandbox_id).split()]


def bash(client: httpx.Client, sandbox_id: str, code: str) -> str:
    result = ok(client.post(f"/sandboxes/{sandbox_id}/exec",
                            json={"language": "bash", "code": code}))
    assert result["exit_code"] == 0, result
    text: str = result["stdout"]
    return text



def logged(log: Path, event: str) -> list[dict[str, Any]]:
    """The lines of a server's JSON log with this event."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
    return found


@contextlib.contextmanager
def tiny_disk(folder: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at folder (made if missing) while the block runs. 8 MiB: room
    for the image of an idle sandbox (its agent and all: about 3 MB), not for 16 MB."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(folder)], check=True, timeout=30)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True, timeout=30)
