"""The file helpers: tiny Python programs run with `runsc exec` that list, read and write
files inside a running sandbox, and the checks of what they answer.

The sandbox's files live in its own memory (the root overlay), so the host cannot reach them
directly; the helpers run as the sandbox's user, so its permissions apply. Nothing the
sandbox's code planted may change what they do (a `json.py` in /workspace, a `sitecustomize`,
a PYTHONPATH in the session's environment): they run as `/usr/bin/python3 -I -S` (no
`PYTHON*` variable, no site, no script folder on the module path) with a fixed environment,
from `/`, and import only the standard library, which the sandbox's user cannot write.
Code in the sandbox still shares their user and might tamper with them while they run, so
their answers are taken as untrusted: capped, parsed strictly and checked.

Protocols, on the helper's stdin and stdout:
- read: the file's size on a line, then exactly that many bytes. A file over the limit is
  refused before a byte is sent.
- write: the helper makes a temporary file beside the target and says `ready`; then it takes
  frames (a 4-byte big-endian length, then that many bytes) until an empty frame, which
  renames the temporary file over the target. Input that ends without it (the upload was
  refused or cut short) removes the temporary file: the target stays as it was.
- list: a JSON array of `[name, kind, size, mtime]`, sorted by name.
A failure is an exit code, turned into a domain error here; nothing a helper writes to
stderr reaches a client.
"""

from __future__ import annotations

import json
import math
import re

from sandbox.domain.errors import (
    FileNotFoundInSandbox,
    InvalidRequest,
    PayloadTooLarge,
    SandboxError,
)
from sandbox.domain.model import FileEntry

PYTHON = "/usr/bin/python3"
ENVIRONMENT = ["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "LC_ALL=C.UTF-8"]
FRAME_BYTES = 64 * 1024
READY = b"ready\n"
COMMIT = (0).to_bytes(4, "big")
MAX_LIST_ENTRIES = 10_000
# Ample for MAX_LIST_ENTRIES names of 255 bytes: a listing past it is not believed.
MAX_LIST_BYTES = 8 * 1024 * 1024
MAX_NAME_CHARS = 255
KINDS = frozenset({"file", "directory", "link", "other"})
# What an ISO 8601 time can show (years 1 to 9999); a stranger mtime is shown at the edge.
EARLIEST_TIME, LATEST_TIME = -62135596800.0, 253402300799.0

# Exit codes of the helpers.
NOT_FOUND, IS_DIRECTORY, TOO_LARGE, NOT_ALLOWED, NOT_DIRECTORY = 3, 4, 5, 6, 7
ABORTED, TOO_MANY, FAILED, NO_SPACE, FILE_TOO_BIG, NAME_TOO_LONG, NOT_REGULAR = range(8, 15)
KILLED = 128 + 9

# The body goes between these two, indented by eight spaces.
_PRELUDE = """
import errno, os, stat, sys
def fail(code):
    sys.exit(code)
path = sys.argv[1]
try:
    try:
"""
_EPILOGUE = f"""
    except FileNotFoundError:
        fail({NOT_FOUND})
    except IsADirectoryError:
        fail({IS_DIRECTORY})
    except (NotADirectoryError, FileExistsError):  # a file where a folder must be
        fail({NOT_DIRECTORY})
    except PermissionError:
        fail({NOT_ALLOWED})
except OSError as error:
    fail({{errno.ENOSPC: {NO_SPACE}, errno.EFBIG: {FILE_TOO_BIG},
           errno.ENAMETOOLONG: {NAME_TOO_LONG}}}.get(error.errno, {FAILED}))
"""

_WRITE = f"""
        if os.path.isdir(path):
            raise IsADirectoryError(path)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, ".upload-" + os.urandom(8).hex())
        out = open(temporary, "xb")
        try:
            sys.stdout.buffer.write(b"ready\\n")
            sys.stdout.buffer.flush()
            source = sys.stdin.buffer
            while True:
                head = source.read(4)
                size = int.from_bytes(head, "big")
                if len(head) < 4 or size > {FRAME_BYTES}:
                    fail({ABORTED})
                if size == 0:
                    break
                data = source.read(size)
                if len(data) < size:
                    fail({ABORTED})
                out.write(data)
            out.close()
            os.replace(temporary, path)
            temporary = None
        finally:
            out.close()
            if temporary is not None:
                os.unlink(temporary)
"""
_READ = f"""
        limit = int(sys.argv[2])
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block it
        with open(descriptor, "rb") as source:
            info = os.fstat(descriptor)
            if stat.S_ISDIR(info.st_mode):
                fail({IS_DIRECTORY})
            if not stat.S_ISREG(info.st_mode):
                fail({NOT_REGULAR})
            if info.st_size > limit:
                fail({TOO_LARGE})
            out = sys.stdout.buffer
            out.write(b"%d\\n" % info.st_size)
            remaining = info.st_size
            while remaining:
                chunk = source.read(min(remaining, {FRAME_BYTES}))
                if not chunk:
                    break  # it shrank: the host sees fewer bytes than it was promised
                out.write(chunk)
                remaining -= len(chunk)
            out.flush()
"""
_LIST = f"""
        import json
        entries = []
        with os.scandir(path) as found:
            for entry in found:
                if len(entries) == {MAX_LIST_ENTRIES}:
                    fail({TOO_MANY})
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone while the folder was read
                mode = info.st_mode
                kind = ("link" if stat.S_ISLNK(mode) else "directory" if stat.S_ISDIR(mode)
                        else "file" if stat.S_ISREG(mode) else "other")
                name = os.fsencode(entry.name).decode("utf-8", "replace")
                entries.append([name, kind, info.st_size, info.st_mtime])
        entries.sort()
        sys.stdout.buffer.write(json.dumps(entries, ensure_ascii=False).encode())
"""


def _argv(body: str, *args: str) -> list[str]:
    return [PYTHON, "-I", "-S", "-c", _PRELUDE + body + _EPILOGUE, *args]


def write_argv(path: str) -> list[str]:
    return _argv(_WRITE, path)


def read_argv(path: str, limit_bytes: int) -> list[str]:
    return _argv(_READ, path, str(limit_bytes))


def list_argv(path: str) -> list[str]:
    return _argv(_LIST, path)


_FIXED_ERRORS: dict[int, tuple[type[SandboxError], str]] = {
    NOT_FOUND: (FileNotFoundInSandbox, "no such file or directory in the sandbox: {path}"),
    IS_DIRECTORY: (InvalidRequest, "{path} is a directory"),
    NOT_DIRECTORY: (InvalidRequest, "a parent of {path} is not a directory"),
    NOT_ALLOWED: (InvalidRequest, "the sandbox user may not access {path}"),
    NOT_REGULAR: (InvalidRequest, "{path} is not a regular file"),
    ABORTED: (InvalidRequest, "the upload to {path} ended before it was complete"),
    TOO_MANY: (PayloadTooLarge, f"{{path}} holds more than {MAX_LIST_ENTRIES} entries, more "
                                "than a listing shows; list a folder inside it"),
    NO_SPACE: (PayloadTooLarge, "no space is left in the sandbox for {path}"),
    FILE_TOO_BIG: (PayloadTooLarge, "{path} would be larger than the sandbox's file size limit"),
    NAME_TOO_LONG: (InvalidRequest, "a name in {path} is too long"),
    KILLED: (InvalidRequest, "the file call on {path} was killed in the sandbox (out of memory, "
                             "or ended by a process of the sandbox)"),
}


def error_for(exit_code: int | None, path: str, limit_bytes: int = 0) -> SandboxError | None:
    """The error a helper's exit code stands for; None when it succeeded."""
    if exit_code == 0:
        return None
    if exit_code == TOO_LARGE:
        return PayloadTooLarge(f"{path} is larger than {limit_bytes} bytes")
    if exit_code in _FIXED_ERRORS:
        kind, message = _FIXED_ERRORS[exit_code]
        return kind(message.format(path=path))
    return InvalidRequest(f"the file call on {path} failed in the sandbox (exit code "
                          f"{exit_code})")


def malformed(path: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"the file call on {path} got {what} from its helper in the sandbox (a process of the "
        "sandbox may have interfered with it)"
    )


_SIZE_LINE = re.compile(rb"\A(\d{1,19})\n\Z")


def parse_size(line: bytes, path: str, limit_bytes: int) -> int:
    """The size a read helper announced, checked against the limit."""
    match = _SIZE_LINE.match(line)
    if match is None:
        raise malformed(path, "no size")
    size = int(match[1])
    if size > limit_bytes:
        raise PayloadTooLarge(f"{path} is larger than {limit_bytes} bytes")
    return size


def parse_listing(raw: bytes, path: str) -> list[FileEntry]:
    """The entries a list helper printed, each checked; anything else is refused whole."""
    if len(raw) > MAX_LIST_BYTES:
        raise malformed(path, "a listing too large")
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError):
        raise malformed(path, "a listing that is no JSON") from None
    if not isinstance(decoded, list) or len(decoded) > MAX_LIST_ENTRIES:
        raise malformed(path, "a listing that is no list of entries")
    return [_entry(item, path) for item in decoded]


def _entry(item: object, path: str) -> FileEntry:
    if not (isinstance(item, list) and len(item) == 4):
        raise malformed(path, "an entry that is no [name, kind, size, mtime]")
    name, kind, size, mtime = item
    if not _is_name(name) or kind not in KINDS:
        raise malformed(path, "an entry with a bad name or kind")
    if type(size) is not int or size < 0:
        raise malformed(path, "an entry with a bad size")
    if type(mtime) not in (int, float) or not math.isfinite(mtime):
        raise malformed(path, "an entry with a bad time")
    return FileEntry(name=name, kind=kind, size=size,
                     modified_at=min(max(float(mtime), EARLIEST_TIME), LATEST_TIME))


def _is_name(name: object) -> bool:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        return False
    if name in (".", "..") or "/" in name or "\0" in name:
        return False
    try:
        name.encode()  # a lone surrogate could not be answered as JSON
    except UnicodeEncodeError:
        return False
    return True
