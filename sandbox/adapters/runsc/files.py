"""File calls inside a running sandbox, done by tiny Python programs run with `runsc exec`.

The sandbox's files live in its own memory (the root overlay), so the host cannot reach them
directly; these programs run as the sandbox's user, so its permissions apply. Each reports a
failure by an exit code the adapter turns into a domain error.
"""

from __future__ import annotations

from sandbox.domain.errors import FileNotFoundInSandbox, InvalidRequest, PayloadTooLarge
from sandbox.domain.model import Program, Stream
from sandbox.domain.ports import OutputSink

NOT_FOUND, IS_DIRECTORY, TOO_LARGE, NOT_ALLOWED, NOT_DIRECTORY = 3, 4, 5, 6, 7

_PRELUDE = """
import json, os, sys
def fail(code, message):
    sys.stderr.write(message)
    sys.exit(code)
path = sys.argv[1]
try:
"""
_EPILOGUE = """
except FileNotFoundError:
    fail(3, "not found")
except IsADirectoryError:
    fail(4, "is a directory")
except (NotADirectoryError, FileExistsError):  # a file where a folder must be
    fail(7, "not a directory")
except PermissionError:
    fail(6, "permission denied")
"""

_WRITE = """
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as out:
        while chunk := sys.stdin.buffer.read(65536):
            out.write(chunk)
"""
_READ = """
    limit = int(sys.argv[2])
    with open(path, "rb") as source:
        if os.fstat(source.fileno()).st_size > limit:
            fail(5, "too large")
        while chunk := source.read(65536):
            sys.stdout.buffer.write(chunk)
"""
_LIST = """
    entries = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        info = entry.stat(follow_symlinks=False)
        kind = ("link" if entry.is_symlink() else "directory" if entry.is_dir()
                else "file" if entry.is_file() else "other")
        entries.append([entry.name, kind, info.st_size, info.st_mtime])
    json.dump(entries, sys.stdout)
"""


def _program(body: str, *args: str) -> Program:
    return Program(language=None, argv=("python3", "-c", _PRELUDE + body + _EPILOGUE, *args))


def write_program(path: str) -> Program:
    return _program(_WRITE, path)


def read_program(path: str, limit_bytes: int) -> Program:
    return _program(_READ, path, str(limit_bytes))


def list_program(path: str) -> Program:
    return _program(_LIST, path)


def raise_for(exit_code: int | None, path: str, limit_bytes: int = 0) -> None:
    if exit_code == 0:
        return
    if exit_code == NOT_FOUND:
        raise FileNotFoundInSandbox(f"no such file or directory in the sandbox: {path}")
    if exit_code == IS_DIRECTORY:
        raise InvalidRequest(f"{path} is a directory")
    if exit_code == NOT_DIRECTORY:
        raise InvalidRequest(f"a parent of {path} is not a directory")
    if exit_code == NOT_ALLOWED:
        raise InvalidRequest(f"the sandbox user may not access {path}")
    if exit_code == TOO_LARGE:
        raise PayloadTooLarge(f"{path} is larger than {limit_bytes} bytes")
    raise InvalidRequest(f"file operation on {path} failed (exit code {exit_code})")


class BytesCapture(OutputSink):
    """Keeps raw stdout up to a limit (for downloads) and stderr for messages."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.stdout = bytearray()
        self.stderr = bytearray()

    async def write(self, stream: Stream, data: bytes) -> None:
        target = self.stdout if stream is Stream.STDOUT else self.stderr
        room = self.limit - len(target)
        target.extend(data[: max(room, 0)])
